"""The pack inside a real ComfyUI: node listing, an image workflow, errors, and UI-format workflows."""
import numpy as np
import pytest

from tools.hostctl import PromptError, execution_error, message_types, pack_node_ids, ui_to_api

pytestmark = pytest.mark.host


def test_server_lists_exactly_the_pack_nodes(comfy):
    info = comfy.object_info(refresh=True)
    ours = {name for name, node in info.items() if node["python_module"] == "custom_nodes.semantica"}
    assert ours == set(pack_node_ids())
    assert all(info[name]["category"].startswith("semantica/") for name in ours)
    assert info["SemanticaImagePrep"]["input_order"]["required"] == ["image", "width", "height", "mode"]


def _rgba_and_gray_inputs():
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)  # left: opaque red
    rgba[:, 20:] = (0, 255, 0, 0)  # right: transparent, with green behind the alpha
    gray = np.tile(np.linspace(0, 255, 30).astype(np.uint8)[None, :], (40, 1))  # 30 wide, 40 high
    return rgba, gray


def test_image_prep_workflow_converts_rgba_and_gray(comfy):
    rgba, gray = _rgba_and_gray_inputs()
    rgba_name, gray_name = comfy.upload_image(rgba), comfy.upload_image(gray)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": rgba_name}},
        # LoadImage gives RGB + mask; JoinImageWithAlpha makes the 4-channel IMAGE the node must handle.
        "2": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["1", 0], "alpha": ["1", 1]}},
        "3": {"class_type": "SemanticaImagePrep", "inputs": {"image": ["2", 0], "width": 80, "height": 64, "mode": "resize"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "prep_rgba"}},
        "5": {"class_type": "LoadImage", "inputs": {"image": gray_name}},
        "6": {"class_type": "SemanticaImagePrep", "inputs": {"image": ["5", 0], "width": 64, "height": 64, "mode": "crop"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "prep_gray"}},
    }
    history, messages = comfy.run_ws(prompt, timeout=120)
    assert history["status"]["status_str"] == "success", execution_error(history)
    kinds = [m["type"] for m in messages]
    assert kinds[-1] == "execution_success"
    assert {m["data"]["node"] for m in messages if m["type"] == "executing"} >= {"3", "6"}

    (rgb_out,) = comfy.get_images(history, node_id="4")
    assert rgb_out.shape == (64, 80, 3)
    assert np.abs(rgb_out[32, 10].astype(int) - (255, 0, 0)).max() <= 3  # opaque red stays red
    assert np.abs(rgb_out[32, 70].astype(int) - (255, 255, 255)).max() <= 3  # transparent -> white, not green

    (gray_out,) = comfy.get_images(history, node_id="6") or comfy.get_images(history, node_id="7")
    assert gray_out.shape == (64, 64, 3)
    assert np.array_equal(gray_out[..., 0], gray_out[..., 1]) and np.array_equal(gray_out[..., 1], gray_out[..., 2])
    assert gray_out[32, 2, 0] < 40 and gray_out[32, 61, 0] > 215  # the gradient survives the crop


def test_invalid_inputs_are_rejected_before_running(comfy):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SemanticaImagePrep", "inputs": {"image": ["1", 0], "width": 0, "height": 64, "mode": "crop"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "never"}},
    }
    with pytest.raises(PromptError) as rejected:
        comfy.queue_prompt(prompt)
    errors = rejected.value.node_errors["2"]["errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("value_smaller_than_min", "width")]

    prompt["2"]["inputs"].update(width=64, mode="zoom")  # 0.3.x leaves V3 combos to the node's validate_inputs
    answer = comfy.queue_prompt(prompt, check=False)
    (error,) = answer["node_errors"]["2"]["errors"]
    assert error["type"] == "custom_validation_failed" and "mode 'zoom' is not one of: crop, pad, resize" in error["details"]


def test_loader_error_reaches_the_client_and_the_server_keeps_serving(comfy, comfy_models_dir):
    encoders = comfy_models_dir / "semantica" / "encoders"
    assert encoders.is_dir()  # the pack registered and created its folder
    (encoders / "bad.safetensors").write_bytes(b"this is not a safetensors file " * 8)
    options = comfy.object_info(refresh=True)["SemanticaEncoderLoader"]["input"]["required"]["encoder_name"][1]["options"]
    assert "bad.safetensors" in options

    prompt = {
        "1": {"class_type": "SemanticaEncoderLoader", "inputs": {"encoder_name": "bad.safetensors"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    history = comfy.run(prompt, timeout=120, check=False)
    assert history["status"]["status_str"] == "error"
    assert "execution_error" in message_types(history)
    error = execution_error(history)
    assert error["node_type"] == "SemanticaEncoderLoader" and error["node_id"] == "1"
    assert "bad.safetensors" in error["exception_message"]

    prompt["1"]["inputs"]["encoder_name"] = "missing.safetensors"  # not in the folder: refused at validation
    with pytest.raises(PromptError) as rejected:
        comfy.queue_prompt(prompt)
    (error,) = rejected.value.node_errors["1"]["errors"]
    assert error["type"] in ("custom_validation_failed", "value_not_in_list")  # newer hosts check combos first
    if error["type"] == "custom_validation_failed":
        assert "'missing.safetensors' was not found" in error["details"] and str(encoders) in error["details"]

    after = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 16, "batch_size": 2, "color": 0xFF8000}},
        "2": {"class_type": "SemanticaImagePrep", "inputs": {"image": ["1", 0], "width": 32, "height": 32, "mode": "pad"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "after_error"}},
    }
    images = comfy.get_images(comfy.run(after, timeout=120))
    assert [im.shape for im in images] == [(32, 32, 3)] * 2
    assert tuple(images[0][16, 16]) == (255, 128, 0) and tuple(images[0][0, 16]) in {(127, 127, 127), (128, 128, 128)}


def test_encoder_loader_loads_an_exported_encoder(comfy, comfy_models_dir):
    from semantica_core.encoders import export_encoder

    export_encoder("resnet10t", comfy_models_dir / "semantica" / "encoders" / "tiny.safetensors", random=True, image_size=64)
    prompt = {
        "1": {"class_type": "SemanticaEncoderLoader", "inputs": {"encoder_name": "tiny.safetensors"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},  # an output node to make the loader run
    }
    history = comfy.run(prompt, timeout=120)
    assert history["outputs"]["2"]["text"]


def _link(link_id, src, src_slot, dst, dst_slot, kind):
    return [link_id, src, src_slot, dst, dst_slot, kind]


def _node(node_id, kind, widgets=(), inputs=(), outputs=(), mode=0, **extra):
    return {"id": node_id, "type": kind, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": node_id,
            "mode": mode, "inputs": list(inputs), "outputs": list(outputs), "properties": {},
            "widgets_values": list(widgets), **extra}


def _ui(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max(l[0] for l in links),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def test_ui_to_api_matches_the_frontend_on_the_default_workflow(comfy):
    inp = lambda name, kind, link: {"name": name, "type": kind, "link": link}  # noqa: E731
    out = lambda name, kind, links: {"name": name, "type": kind, "links": links}  # noqa: E731
    workflow = _ui([
        _node(3, "KSampler", [156680208700286, "randomize", 20, 8, "euler", "normal", 1],
              [inp("model", "MODEL", 1), inp("positive", "CONDITIONING", 4), inp("negative", "CONDITIONING", 6),
               inp("latent_image", "LATENT", 2)], [out("LATENT", "LATENT", [7])]),
        _node(4, "CheckpointLoaderSimple", ["v1-5-pruned-emaonly.safetensors"], [],
              [out("MODEL", "MODEL", [1]), out("CLIP", "CLIP", [3, 5]), out("VAE", "VAE", [8])]),
        _node(5, "EmptyLatentImage", [512, 512, 1], [], [out("LATENT", "LATENT", [2])]),
        _node(6, "CLIPTextEncode", ["a photo of a cat"], [inp("clip", "CLIP", 3)], [out("CONDITIONING", "CONDITIONING", [4])],
              title="Positive"),
        _node(7, "CLIPTextEncode", ["blurry"], [inp("clip", "CLIP", 5)], [out("CONDITIONING", "CONDITIONING", [6])]),
        _node(8, "VAEDecode", [], [inp("samples", "LATENT", 7), inp("vae", "VAE", 8)], [out("IMAGE", "IMAGE", [9])]),
        _node(9, "SaveImage", ["ComfyUI"], [inp("images", "IMAGE", 9)]),
        _node(10, "Note", ["notes are not part of the prompt"]),
    ], [_link(1, 4, 0, 3, 0, "MODEL"), _link(2, 5, 0, 3, 3, "LATENT"), _link(3, 4, 1, 6, 0, "CLIP"),
        _link(4, 6, 0, 3, 1, "CONDITIONING"), _link(5, 4, 1, 7, 0, "CLIP"), _link(6, 7, 0, 3, 2, "CONDITIONING"),
        _link(7, 3, 0, 8, 0, "LATENT"), _link(8, 4, 2, 8, 1, "VAE"), _link(9, 8, 0, 9, 0, "IMAGE")])

    api = ui_to_api(workflow, comfy.object_info())
    assert {k: (v["class_type"], v["inputs"]) for k, v in api.items()} == {
        "3": ("KSampler", {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler",
                           "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0],
                           "negative": ["7", 0], "latent_image": ["5", 0]}),
        "4": ("CheckpointLoaderSimple", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}),
        "5": ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}),
        "6": ("CLIPTextEncode", {"text": "a photo of a cat", "clip": ["4", 1]}),
        "7": ("CLIPTextEncode", {"text": "blurry", "clip": ["4", 1]}),
        "8": ("VAEDecode", {"samples": ["3", 0], "vae": ["4", 2]}),
        "9": ("SaveImage", {"filename_prefix": "ComfyUI", "images": ["8", 0]}),
    }
    assert api["6"]["_meta"]["title"] == "Positive" and api["3"]["_meta"]["title"] == "KSampler"

    # The server agrees: the only thing wrong with the converted prompt is the checkpoint this host lacks.
    answer = comfy.queue_prompt(api, check=False)
    problems = {(node, e["type"], e["extra_info"].get("input_name"))
                for node, found in answer["node_errors"].items() for e in found["errors"]}
    assert problems == {("4", "value_not_in_list", "ckpt_name")}

    with pytest.raises(ValueError, match="type 'NoSuchNode'.*install the custom node pack"):
        ui_to_api(_ui([_node(1, "NoSuchNode")], [_link(1, 1, 0, 1, 0, "X")]), comfy.object_info())


def test_ui_workflow_with_reroute_primitive_bypass_and_mute_runs(comfy):
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, 10:] = 255  # left black, right white
    name = comfy.upload_image(image)
    workflow = _ui([
        _node(1, "LoadImage", [name, "image"], [],
              [{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": None}]),
        _node(2, "Reroute", [], [{"name": "", "type": "*", "link": 1}], [{"name": "", "type": "IMAGE", "links": [2]}]),
        _node(3, "SemanticaImagePrep", [64, 32, "pad"],
              [{"name": "image", "type": "IMAGE", "link": 2},
               {"name": "width", "type": "INT", "link": 3, "widget": {"name": "width"}}],
              [{"name": "IMAGE", "type": "IMAGE", "links": [4, 6]}], title="Prep for the model"),
        _node(4, "PrimitiveNode", [48, "fixed"], [],
              [{"name": "INT", "type": "INT", "links": [3], "widget": {"name": "width"}}]),
        _node(5, "ImageInvert", [], [{"name": "image", "type": "IMAGE", "link": 4}],
              [{"name": "IMAGE", "type": "IMAGE", "links": [5]}], mode=4),  # bypassed: passes the image through
        _node(6, "SaveImage", ["ui_workflow"], [{"name": "images", "type": "IMAGE", "link": 5}]),
        _node(7, "SaveImage", ["muted"], [{"name": "images", "type": "IMAGE", "link": 6}], mode=2),
        _node(8, "MarkdownNote", ["# not sent"]),
    ], [_link(1, 1, 0, 2, 0, "IMAGE"), _link(2, 2, 0, 3, 0, "IMAGE"), _link(3, 4, 0, 3, 1, "INT"),
        _link(4, 3, 0, 5, 0, "IMAGE"), _link(5, 5, 0, 6, 0, "IMAGE"), _link(6, 3, 0, 7, 0, "IMAGE")])

    api = ui_to_api(workflow, comfy.object_info())
    assert {k: (v["class_type"], v["inputs"]) for k, v in api.items()} == {
        "1": ("LoadImage", {"image": name}),
        "3": ("SemanticaImagePrep", {"image": ["1", 0], "width": 48, "height": 32, "mode": "pad"}),
        "6": ("SaveImage", {"filename_prefix": "ui_workflow", "images": ["3", 0]}),
    }
    history = comfy.run(api, timeout=120)
    (out,) = comfy.get_images(history)
    assert out.shape == (32, 48, 3)  # the primitive's width, the widget's height
    assert tuple(out[0, 24]) in {(127, 127, 127), (128, 128, 128)}  # 20x10 scaled to 48x24, gray bands above and below
    assert out[16, 2].max() < 20 and out[16, 45].min() > 235  # not inverted: the bypassed node did nothing
