"""The Semantica nodes and the shipped workflows inside a real ComfyUI server, over HTTP and /ws only.

The served templates (workflows/*.json) run on the pack's embedded models and example images, as a user meets them.
Other model files are tiny random-weight stand-ins written once per session into the server's models folder, under
the names the tests and the workflows that need the user's own files (workflows/with_your_files/) ask for. Real
photos come from skimage.data.
"""
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import interrupt_during_sampling, randomize_zero_init
from tools.hostctl import REPO_ROOT, ComfyServer, PromptError, execution_error, message_types, ui_to_api

pytestmark = pytest.mark.host

WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))  # served as templates: run as they are
USER_FILE_WORKFLOWS = sorted((REPO_ROOT / "workflows" / "with_your_files").glob("*.json"))
EXAMPLE_INPUTS = sorted(p.name for p in (REPO_ROOT / "assets" / "inputs").glob("*.png"))
# The folder each file-selecting widget reads, for the workflows that need the user's own files.
LOADER_FOLDERS = {"SemanticaUNetLoader": "semantica", "SemanticaEncoderLoader": "semantica_encoders",
                  "CLIPVisionLoader": "clip_vision", "SinDiffusionTextGuided": "open_clip"}
MODEL_RESOLUTION = 32  # the tiny preset the fixture models use
PREP_SIZE = (48, 32)  # Image Prep (width, height) in the workflow runs: the tiny model is quick at small sizes
FOLDERS = {"semantica": ("semantica",), "semantica_encoders": ("semantica", "encoders"),
           "clip_vision": ("clip_vision",), "open_clip": ("open_clip",)}
# Workflow runs on the CPU stand-ins: fewer steps, small sizes. Per node type; inputs a node lacks are left alone.
WORKFLOW_OVERRIDES = {
    "SemanticaImagePrep": {"width": PREP_SIZE[0], "height": PREP_SIZE[1]},
    "SemanticaVariationSampler": {"steps": 3},
    "SemanticaSDEdit": {"steps": 3},
    "SinDiffusionTrain": {"steps": 5, "size": 32, "preset": "sindiffusion_tiny"},
    "SinDiffusionSample": {"steps": 3, "count": 1},
    "SinDiffusionOutpaint": {"steps": 3},
    "SinDiffusionTextGuided": {"steps": 3, "count": 1, "clip_arch": "ViT-S-32"},  # see ModelFiles._open_clip
}


# --- model files -------------------------------------------------------------------------------------------------


class ModelFiles:
    """Writes the stand-in model files on first request, once per session."""

    def __init__(self, models_dir: Path, scratch: Path):
        self.models_dir, self.scratch = Path(models_dir), Path(scratch)
        self.made: dict[tuple[str, str], Path] = {}
        self.makers = {
            ("semantica_encoders", "random-efficientnet-lite0.safetensors"): self._encoder,
            ("semantica", "semantica-variations.safetensors"): self._pair_model,
            ("clip_vision", "open_clip_vit_l14_openai.safetensors"): self._clip_vision,
            ("semantica", "semantica-variations-vit-l14.safetensors"): self._clip_pair_model,
            ("semantica_encoders", "other-encoder.safetensors"): self._other_encoder,
            ("semantica", "single-image-tiny.safetensors"): self._single_image_model,
            ("semantica_encoders", "open_clip_vit_l14_openai.safetensors"): self._clip_encoder,
            ("semantica", "random-vit-l14-tiny.safetensors"): self._clip_random_model,
            ("open_clip", "open_clip_vit_b32_openai.safetensors"): self._open_clip,
        }

    def path(self, directory: str, name: str) -> Path:
        return self.models_dir.joinpath(*FOLDERS[directory], name)

    def ensure(self, directory: str, name: str) -> Path:
        key = (directory, name)
        if key not in self.made:
            if key not in self.makers:
                pytest.fail(f"a workflow needs {directory}/{name}: add a stand-in maker for it to ModelFiles.makers")
            path = self.path(directory, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.makers[key](path)
            self.made[key] = path
        return self.made[key]

    def _encoder(self, path):
        from semantica_core.encoders import export_encoder

        export_encoder("efficientnet-lite0", path, random=True, seed=0, image_size=64)

    def _other_encoder(self, path):
        from semantica_core.encoders import export_encoder

        export_encoder("resnet10t", path, random=True, seed=1, image_size=64)

    def _pair_model(self, path, encoder=("semantica_encoders", "random-efficientnet-lite0.safetensors")):
        from semantica_core.checkpoint import save_checkpoint
        from semantica_core.encoders import read_encoder_spec
        from semantica_core.networks import build_network
        from semantica_core.presets import network_preset
        from semantica_core.presets import default_diffusion_config

        spec = read_encoder_spec(self.ensure(*encoder))
        config = network_preset("tiny", spec.token_dim, spec.pooled_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network = randomize_zero_init(build_network("pair_conditioned", config))
        save_checkpoint(path, kind="pair_conditioned", network_config=config,
                        diffusion_config=default_diffusion_config("tiny", config.resolution),
                        state_dict=network.state_dict(), encoder_info=spec.info(), training_info={"preset": "tiny"})

    def _single_image_model(self, path):
        from semantica_core.checkpoint import save_checkpoint
        from semantica_core.diffusion import DiffusionConfig, ScheduleConfig
        from semantica_core.networks import PatchUNetConfig, build_network

        config = PatchUNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            network = randomize_zero_init(build_network("single_image", config))
        diffusion = DiffusionConfig(schedule=ScheduleConfig(kind="vp_linear", timesteps=1000), prediction="eps")
        save_checkpoint(path, kind="single_image", network_config=config, diffusion_config=diffusion,
                        state_dict=network.state_dict(), training_info={"train_width": 40, "train_height": 24})

    def _clip_vision(self, path):
        """A random open_clip ViT-L/14 (quick-GELU) image tower in float16, in open_clip's layout (`visual.` names),
        which ComfyUI's CLIPVisionLoader reads as its ViT-L. ViT-L is the smallest CLIP ComfyUI recognises."""
        from safetensors.torch import save_file

        from semantica_core.encoders.open_clip_backend import create_vision_tower, vision_backend_config
        import open_clip

        config = vision_backend_config(open_clip.get_model_config("ViT-L-14-quickgelu"))
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in create_vision_tower(config).state_dict().items()}
        g = torch.Generator().manual_seed(0)
        tensors = {}
        for name, shape in shapes.items():
            if name.rsplit(".", 1)[-1] == "weight" and len(shape) == 1:  # LayerNorm scales
                t = torch.ones(shape)
            elif name.endswith("bias") and len(shape) == 1:
                t = torch.zeros(shape)
            else:
                t = torch.randn(shape, generator=g) * 0.02
            tensors["visual." + name] = t.half()
        save_file(tensors, str(path))

    def _clip_pair_model(self, path):
        """Exactly what a user runs: export the encoder from the CLIP vision file, then `semantica init` from it."""
        from training.cli import main

        clip_file = self.ensure("clip_vision", "open_clip_vit_l14_openai.safetensors")
        encoder = self.scratch / "open_clip_vit_l14_openai-encoder.safetensors"
        assert main(["encoder", "export", "open_clip:ViT-L-14-quickgelu", "--weights", str(clip_file),
                     "--output", str(encoder)]) == 0
        assert main(["init", "--encoder", str(encoder), "--preset", "tiny", "--output", str(path)]) == 0
        self.clip_encoder_file = encoder

    def _open_clip(self, path):
        """A whole random open_clip model for text guidance: ViT-S-32, the smallest stock architecture, stands in
        for the workflow's ViT-B-32 (the workflow runs set clip_arch accordingly)."""
        import open_clip
        from safetensors.torch import save_file

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model("ViT-S-32")
        save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))

    def _clip_encoder(self, path):
        self.ensure("semantica", "semantica-variations-vit-l14.safetensors")
        os.link(self.clip_encoder_file, path)  # the exported encoder file, without copying 1.2 GB

    def _clip_random_model(self, path):
        self._pair_model(path, encoder=("semantica_encoders", "open_clip_vit_l14_openai.safetensors"))


@pytest.fixture(scope="session")
def files(comfy_models_dir, tmp_path_factory) -> ModelFiles:
    return ModelFiles(comfy_models_dir, tmp_path_factory.mktemp("semantica-scratch"))


@pytest.fixture(scope="session")
def pair_model(files) -> str:
    files.ensure("semantica_encoders", "random-efficientnet-lite0.safetensors")
    return files.ensure("semantica", "semantica-variations.safetensors").name


# --- input images ------------------------------------------------------------------------------------------------


def _photo():
    import skimage.data

    return skimage.data.astronaut()


def _photo_b():
    import skimage.data

    return skimage.data.coffee()


def _stroke_painting():
    """A coarse colour painting: a photo reduced to big flat blocks of few colours."""
    import skimage.data

    small = Image.fromarray(skimage.data.chelsea()).resize((18, 12), Image.BILINEAR)
    blocks = small.resize((360, 240), Image.NEAREST)
    return (np.asarray(blocks) // 64 * 64 + 32).astype(np.uint8)


def _masked_photo():
    """RGBA photo whose transparent rectangle is the area to change (LoadImage's MASK = 1 - alpha)."""
    import skimage.data

    rgb = skimage.data.chelsea()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[60:200, 120:300] = 0
    return np.dstack([rgb, alpha])


def _small_photo():
    """For direct SDEdit runs: the tiny CPU stand-in models are quick only at small sizes."""
    return np.asarray(Image.fromarray(_photo()).resize((40, 28), Image.BICUBIC))


INPUT_IMAGES = {
    "host_test_small_photo.png": _small_photo,
    "host_test_photo.png": _photo,
    "host_test_photo_b.png": _photo_b,
    "host_test_stroke_painting.png": _stroke_painting,
    "host_test_masked_photo.png": _masked_photo,
}


@pytest.fixture(scope="session")
def inputs(comfy) -> dict:
    """Uploads the example inputs under the names the workflows' LoadImage nodes use; name -> uint8 array."""
    arrays = {}
    for name, make in INPUT_IMAGES.items():
        arrays[name] = make()
        assert comfy.upload_image(arrays[name], name=name) == name
    return arrays


# --- helpers -----------------------------------------------------------------------------------------------------


def variation_prompt(model: str, image: str, seed: int, count: int = 2, steps: int = 3,
                     encoder="random-efficientnet-lite0.safetensors", **sampler):
    inputs = dict(seed=seed, count=count, steps=steps, guidance=3.0, sampler="euler_ancestral", spacing="karras",
                  width=0, height=0, model=["2", 0], embeds=["4", 0])
    inputs.update(sampler)
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "SemanticaUNetLoader", "inputs": {"model_name": model, "weights": "ema"}},
        "3": {"class_type": "SemanticaEncoderLoader", "inputs": {"encoder_name": encoder}},
        "4": {"class_type": "SemanticaEncodeImage", "inputs": {"encoder": ["3", 0], "image": ["1", 0]}},
        "5": {"class_type": "SemanticaVariationSampler", "inputs": inputs},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": f"var_{seed}"}},
    }


def sdedit_prompt(model: str, image: str, seed: int, mask=None, **options):
    inputs = dict(model=["2", 0], image=["1", 0], seed=seed, strength=0.6, steps=3, repeats=1, sampler="ddpm",
                  guidance=1.0)
    if mask is not None:
        inputs["mask"] = mask
    inputs.update(options)
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "SemanticaUNetLoader", "inputs": {"model_name": model, "weights": "ema"}},
        "5": {"class_type": "SemanticaSDEdit", "inputs": inputs},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": f"sdedit_{seed}"}},
    }


def assert_error(comfy, prompt, node_type: str, *fragments: str) -> str:
    history = comfy.run(prompt, timeout=300, check=False)
    assert history["status"]["status_str"] == "error", "the prompt should have failed"
    error = execution_error(history)
    assert error is not None and error["node_type"] == node_type, error
    for fragment in fragments:
        assert fragment in error["exception_message"], error["exception_message"]
    return error["exception_message"]


def assert_serving(comfy, pair_model, inputs, seed):
    """The server still runs prompts after an error."""
    prompt = variation_prompt(pair_model, "host_test_photo.png", seed, count=1, steps=1)
    images = comfy.get_images(comfy.run(prompt))
    assert [im.shape for im in images] == [(MODEL_RESOLUTION, MODEL_RESOLUTION, 3)]


# --- /object_info ------------------------------------------------------------------------------------------------

# node -> (required inputs in order as (name, type), optional inputs, output types, output names)
NODE_API = {
    "SemanticaEncoderLoader": ([("encoder_name", "COMBO")], [], ["SEMANTICA_ENCODER"], ["encoder"]),
    "SemanticaUNetLoader": ([("model_name", "COMBO"), ("weights", "COMBO")], [], ["SEMANTICA_MODEL"], ["model"]),
    "SemanticaEncodeImage": (
        [("encoder", "SEMANTICA_ENCODER"), ("image", "IMAGE")], [], ["SEMANTICA_EMBEDS"], ["embeds"]),
    "SemanticaClipVisionEmbeds": (
        [("clip_vision", "CLIP_VISION"), ("clip_vision_output", "CLIP_VISION_OUTPUT"), ("tokens", "COMBO")], [],
        ["SEMANTICA_EMBEDS"], ["embeds"]),
    "SemanticaEmbedsMix": (
        [("embeds_a", "SEMANTICA_EMBEDS"), ("embeds_b", "SEMANTICA_EMBEDS"), ("weight", "FLOAT")], [],
        ["SEMANTICA_EMBEDS"], ["embeds"]),
    "SemanticaVariationSampler": (
        [("model", "SEMANTICA_MODEL"), ("embeds", "SEMANTICA_EMBEDS"), ("seed", "INT"), ("count", "INT"),
         ("steps", "INT"), ("guidance", "FLOAT"), ("sampler", "COMBO"), ("spacing", "COMBO"), ("width", "INT"),
         ("height", "INT")], [], ["IMAGE"], ["images"]),
    "SemanticaSDEdit": (
        [("model", "SEMANTICA_MODEL"), ("image", "IMAGE"), ("seed", "INT"), ("strength", "FLOAT"), ("steps", "INT"),
         ("repeats", "INT"), ("sampler", "COMBO"), ("guidance", "FLOAT")],
        [("mask", "MASK"), ("embeds", "SEMANTICA_EMBEDS")], ["IMAGE"], ["images"]),
}


def test_object_info_lists_every_node_with_its_inputs_and_outputs(comfy, pair_model):
    from semantica_core.diffusion import SAMPLERS, SPACINGS

    info = comfy.object_info(refresh=True)
    for node, (required, optional, output_types, output_names) in NODE_API.items():
        spec = info[node]
        assert spec["category"].startswith("semantica/") and spec["description"]
        got_required = [(name, spec["input"]["required"][name][0]) for name in spec["input_order"]["required"]]
        assert got_required == required, node
        got_optional = [(name, spec["input"]["optional"][name][0]) for name in spec["input_order"].get("optional", [])]
        assert got_optional == optional, node
        assert spec["output"] == output_types and spec["output_name"] == output_names, node

    sampler = info["SemanticaVariationSampler"]["input"]["required"]
    assert sampler["sampler"][1]["options"] == list(SAMPLERS) and sampler["spacing"][1]["options"] == list(SPACINGS)
    assert sampler["seed"][1]["control_after_generate"] is True
    assert sampler["width"][1]["min"] == 0 and sampler["count"][1]["min"] == 1
    sdedit = info["SemanticaSDEdit"]["input"]["required"]
    assert sdedit["strength"][1]["min"] > 0 and sdedit["strength"][1]["max"] == 1.0
    assert info["SemanticaClipVisionEmbeds"]["input"]["required"]["tokens"][1]["options"] == [
        "open_clip", "last_hidden_state", "penultimate_hidden_states"]
    # loader widgets list the files of their folders; encoders stay out of the model list
    models = info["SemanticaUNetLoader"]["input"]["required"]["model_name"][1]["options"]
    encoders = info["SemanticaEncoderLoader"]["input"]["required"]["encoder_name"][1]["options"]
    assert pair_model in models and "random-efficientnet-lite0.safetensors" in encoders
    assert not any(name.startswith("encoders") for name in models)


# --- the shipped workflows ---------------------------------------------------------------------------------------


def _boxes_overlap(a, b) -> bool:
    title = 30  # the title bar sits above a node's pos
    ax, ay, aw, ah = a["pos"][0], a["pos"][1] - title, a["size"][0], a["size"][1] + title
    bx, by, bw, bh = b["pos"][0], b["pos"][1] - title, b["size"][0], b["size"][1] + title
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


@pytest.mark.parametrize("path", WORKFLOWS + USER_FILE_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_file_is_a_tidy_ui_workflow(path, comfy):
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and workflow["last_node_id"] >= max(nodes)
    assert workflow["last_link_id"] >= max(link[0] for link in workflow["links"])
    info = comfy.object_info()
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind and link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["type"] == kind and nodes[dst]["inputs"][dst_slot]["link"] == link_id
    for node in nodes.values():
        assert node["type"] in info or node["type"] in ("MarkdownNote", "Note"), node["type"]
        for model in node.get("properties", {}).get("models", []):
            # the frontend downloads only from a few model hosts; a file the user makes is explained in the note
            assert set(model) >= {"name", "url", "directory"} and model["url"].startswith("https://huggingface.co/")
            assert model["name"] in node["widgets_values"], "the frontend only checks models a widget selects"
    placed = list(nodes.values())
    for i, a in enumerate(placed):
        for b in placed[i + 1:]:
            assert not _boxes_overlap(a, b), f"nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_a_template_names_only_files_the_server_has(path, comfy):
    """No missing-model dialog and nothing to pick: every file a widget selects is in the server's list for it."""
    workflow = json.loads(path.read_text())
    for node in workflow["nodes"]:
        assert not node.get("properties", {}).get("models"), "a template on the embedded models needs no download"
    info = comfy.object_info(refresh=True)
    for node in ui_to_api(workflow, info).values():
        specs = {**info[node["class_type"]]["input"].get("required", {}),
                 **info[node["class_type"]]["input"].get("optional", {})}
        for name, value in node["inputs"].items():
            kind = specs[name][0]
            options = specs[name][1]["options"] if kind == "COMBO" else kind if isinstance(kind, list) else None
            if options is not None:
                assert value in options, f"{node['class_type']}.{name} = {value!r} is not offered: {options}"


@pytest.mark.parametrize("path", USER_FILE_WORKFLOWS, ids=lambda p: p.stem)
def test_a_workflow_that_needs_the_users_files_says_which(path):
    workflow = json.loads(path.read_text())
    (text,) = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "MarkdownNote"]
    assert "needs" in text and "your own" in text
    embedded = {p.name for p in (REPO_ROOT / "models" / "demo").rglob("*.safetensors")}
    for node in workflow["nodes"]:
        if node["type"] in LOADER_FOLDERS and node["widgets_values"][0] not in embedded:
            assert node["widgets_values"][0] in text or node.get("properties", {}).get("models"), node["type"]


def test_workflows_are_listed_as_templates(comfy):
    listed = comfy.http.get(comfy.url + "/api/workflow_templates", timeout=30).json()
    assert sorted(listed.get("semantica", [])) == sorted(p.stem for p in WORKFLOWS)
    for path in WORKFLOWS:  # and served as they are, for the Templates browser
        served = comfy.http.get(f"{comfy.url}/api/workflow_templates/semantica/{path.name}", timeout=30)
        assert served.status_code == 200 and served.json() == json.loads(path.read_text())


def apply_overrides(api: dict, **per_type: dict) -> None:
    """WORKFLOW_OVERRIDES, then `per_type` ({class_type: {input: value}}), on a converted workflow, in place; a node
    keeps the inputs it lacks out of it."""
    for node in api.values():
        values = node["inputs"]
        for overrides in (WORKFLOW_OVERRIDES, per_type):
            values.update({k: v for k, v in overrides.get(node["class_type"], {}).items() if k in values})


def _expected_images(api: dict, output_id: str):
    """(count, (height, width)) an output node of a converted workflow must show, or None for unknown sources."""
    source_id = api[output_id]["inputs"]["images"][0]
    source = api[source_id]
    kind, inputs = source["class_type"], source["inputs"]
    if kind == "SemanticaImagePrep":
        return 1, (inputs["height"], inputs["width"])
    if kind == "SemanticaVariationSampler":
        return inputs["count"], (inputs["height"] or MODEL_RESOLUTION, inputs["width"] or MODEL_RESOLUTION)
    if kind == "SemanticaSDEdit":
        image = api[inputs["image"][0]]
        if image["class_type"] != "SemanticaImagePrep":
            return None
        return 1, (image["inputs"]["height"], image["inputs"]["width"])
    return None


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_runs(path, comfy):
    """On the embedded models and the pack's example images, with fewer steps (the browser test runs them as they
    are)."""
    workflow = json.loads(path.read_text())
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            assert node["widgets_values"][0] in EXAMPLE_INPUTS, f"no example input for {node['widgets_values'][0]}"
    _run_and_check_workflow(path, workflow, comfy)


@pytest.mark.parametrize("path", USER_FILE_WORKFLOWS, ids=lambda p: p.stem)
def test_a_workflow_with_the_users_files_runs_once_they_are_there(path, comfy, files, inputs):
    workflow = json.loads(path.read_text())
    embedded = {p.name for p in (REPO_ROOT / "models" / "demo").rglob("*.safetensors")}
    for node in workflow["nodes"]:
        if node["type"] in LOADER_FOLDERS and node["widgets_values"][0] not in embedded:
            files.ensure(LOADER_FOLDERS[node["type"]], node["widgets_values"][0])
    _run_and_check_workflow(path, workflow, comfy)


def _run_and_check_workflow(path, workflow, comfy):
    api = ui_to_api(workflow, comfy.object_info(refresh=True))
    # SinDiffusionTrain never overwrites a model: one name per workflow run
    apply_overrides(api, SinDiffusionTrain={"model_name": f"workflow_test_{path.stem}"})
    history = comfy.run(api, timeout=600)
    assert history["status"]["status_str"] == "success", execution_error(history)
    outputs = [nid for nid, node in api.items() if node["class_type"] in ("SaveImage", "PreviewImage")]
    assert outputs
    for nid in outputs:
        images = comfy.get_images(history, node_id=nid)
        expected = _expected_images(api, nid)
        if expected is None:
            assert images, f"output node {nid} showed no images"
            continue
        count, (height, width) = expected
        assert [im.shape for im in images] == [(height, width, 3)] * count, nid
    if path.stem == "sdedit_masked_edit":  # outside the mask the result is the image (resized by Image Prep)
        (load_id,) = [nid for nid, node in api.items() if node["class_type"] == "LoadImage"]
        _check_masked_workflow(api, history, comfy, api[load_id]["inputs"]["image"])


def test_a_checkpoint_trained_by_the_cli_runs_the_variation_workflow(comfy, files, inputs, tmp_path_factory):
    """`semantica train pairs --preset tiny` on pages of real photos; its export goes through the shipped workflow."""
    import subprocess
    import sys

    from training.data.example_pages import write_example_pages

    root = tmp_path_factory.mktemp("cli-trained")
    write_example_pages(str(root / "pages"), num_pages=6, size=64)
    encoder = REPO_ROOT / "models" / "demo" / "encoders" / "efficientnet-lite0.safetensors"  # the workflow's encoder
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "training.cli", "train", "pairs", "--data", str(root / "pages"),
               "--encoder", str(encoder), "--preset", "tiny", "--max-steps", "6", "--batch-size", "4",
               "--output-dir", str(root / "run")]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    model_name = "cli-trained-tiny.safetensors"
    (files.path("semantica", model_name)).write_bytes((root / "run" / "model.safetensors").read_bytes())

    workflow = json.loads((REPO_ROOT / "workflows" / "semantica_image_variations.json").read_text())
    api = ui_to_api(workflow, comfy.object_info(refresh=True))
    apply_overrides(api, SemanticaUNetLoader={"model_name": model_name})
    history = comfy.run(api, timeout=600)
    assert history["status"]["status_str"] == "success", execution_error(history)
    (save_id,) = [nid for nid, node in api.items() if node["class_type"] == "SaveImage"]
    images = comfy.get_images(history, node_id=save_id)
    count, (height, width) = _expected_images(api, save_id)
    assert [im.shape for im in images] == [(height, width, 3)] * count
    assert all(im.std() > 0 for im in images)


def _check_masked_workflow(api, history, comfy, image_name: str):
    import torch.nn.functional as F

    rgba = np.asarray(Image.open(REPO_ROOT / "assets" / "inputs" / image_name))
    (out,) = comfy.get_images(history, node_id=next(k for k, v in api.items() if v["class_type"] == "SaveImage"))
    width, height = PREP_SIZE
    # Image Prep "resize" and the node's mask resize are both bilinear on the whole frame
    mask = torch.from_numpy(1.0 - rgba[..., 3].astype(np.float32) / 255)[None, None]
    mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    keep, change = mask == 0, mask == 1
    assert keep.sum() > 100 and change.sum() > 50, (keep.sum(), change.sum())
    prep = {"p": {"class_type": "LoadImage", "inputs": {"image": image_name}},
            "q": {"class_type": "SemanticaImagePrep", "inputs": {"image": ["p", 0], "width": width, "height": height,
                                                                  "mode": "resize"}},
            "r": {"class_type": "SaveImage", "inputs": {"images": ["q", 0], "filename_prefix": "masked_guide"}}}
    (guide,) = comfy.get_images(comfy.run(prep))
    assert np.array_equal(out[keep], guide[keep])
    assert np.abs(out[change].astype(int) - guide[change]).mean() > 5


# --- progress, previews, interrupt -------------------------------------------------------------------------------


def test_progress_message_per_step(comfy, pair_model, inputs):
    prompt = variation_prompt(pair_model, "host_test_photo.png", seed=701, count=1, steps=7)
    history, messages = comfy.run_ws(prompt, timeout=300)
    assert history["status"]["status_str"] == "success", execution_error(history)
    progress = [m["data"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "5"]
    assert [p["value"] for p in progress] == list(range(1, 8)) and {p["max"] for p in progress} == {7}

    sdedit = sdedit_prompt(pair_model, "host_test_small_photo.png", seed=702, steps=4, repeats=2)
    history, messages = comfy.run_ws(sdedit, timeout=300)
    assert history["status"]["status_str"] == "success", execution_error(history)
    progress = [m["data"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "5"]
    assert [p["value"] for p in progress] == list(range(1, 9)) and {p["max"] for p in progress} == {8}


@pytest.fixture(scope="module")
def preview_server(tmp_path_factory):
    """A second server started as users start ComfyUI to see previews (the session's server runs without)."""
    base = tmp_path_factory.mktemp("comfy-previews")
    server = ComfyServer(base, log_path=base / "comfyui.log", cpu=True, extra_args=["--preview-method", "auto"])
    server.start(timeout=120)
    try:
        yield server
    finally:
        server.stop()


def test_sampling_sends_an_x0_preview_with_every_step(preview_server, tmp_path_factory):
    files = ModelFiles(preview_server.models_dir, tmp_path_factory.mktemp("preview-scratch"))
    files.ensure("semantica_encoders", "random-efficientnet-lite0.safetensors")
    model = files.ensure("semantica", "semantica-variations.safetensors").name
    client = preview_server.client()
    client.upload_image(_small_photo(), name="host_test_photo.png")
    history, messages = client.run_ws(variation_prompt(model, "host_test_photo.png", seed=5, count=2, steps=5))
    assert history["status"]["status_str"] == "success", execution_error(history)
    progress = [m for m in messages if m["type"] == "progress"]
    previews = [m for m in messages if m["type"] == "binary" and m["event"] == 1]  # PREVIEW_IMAGE
    assert len(progress) == 5 and len(previews) == 5
    first, last = (Image.open(io.BytesIO(p["data"][4:])) for p in (previews[0], previews[-1]))  # after the format word
    # ComfyUI scales previews to fit --preview-size (512 by default): the square canvas stays square
    assert first.format == "JPEG" and first.size == last.size and first.size[0] == first.size[1]
    assert np.asarray(first).std() > 0 and not np.array_equal(np.asarray(first), np.asarray(last))


def test_interrupt_stops_a_long_sampling_within_two_seconds(comfy, pair_model, inputs):
    prompt = variation_prompt(pair_model, "host_test_photo.png", seed=801, count=1, steps=1000)
    elapsed, message, prompt_id = interrupt_during_sampling(comfy, prompt, steps_before=3, timeout=120)
    assert elapsed < 2.0, f"interrupt took {elapsed:.2f} s"
    assert message["data"]["node_type"] == "SemanticaVariationSampler"
    assert "execution_interrupted" in message_types(comfy.wait_for(prompt_id, timeout=60))
    assert_serving(comfy, pair_model, inputs, seed=802)


# --- the same images as the core API -----------------------------------------------------------------------------


def test_node_output_equals_the_core_api_for_the_same_seed(comfy, files, pair_model, inputs):
    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.encoders import load_encoder
    from semantica_core.pipeline import sample_variations

    settings = dict(seed=4242, count=3, steps=4, guidance=2.5, sampler="dpmpp_2m", spacing="karras")
    prompt = variation_prompt(pair_model, "host_test_photo.png", **settings)
    node_images = comfy.get_images(comfy.run(prompt, timeout=300))

    # The core, on the same files; the image as LoadImage reads the uploaded PNG.
    photo = torch.from_numpy(inputs["host_test_photo.png"].astype(np.float32) / 255.0)
    encoder = load_encoder(files.path("semantica_encoders", "random-efficientnet-lite0.safetensors"))
    with pytest.warns(UserWarning, match="no EMA weights"):
        model = load_checkpoint(files.path("semantica", pair_model), weights="ema")
    embeds = encoder(photo.movedim(-1, 0)[None])
    core = sample_variations(model, embeds, **settings)
    # SaveImage writes np.clip(255 * x, 0, 255).astype(uint8) of the float32 image
    quantized = np.clip(255.0 * core.movedim(1, -1).numpy(), 0, 255).astype(np.uint8)
    assert len(node_images) == 3
    for k, image in enumerate(node_images):
        difference = np.abs(image.astype(int) - quantized[k]).max()
        assert np.array_equal(image, quantized[k]), f"variation {k}: max difference {difference}"


# --- inputs that work: RGBA, grayscale, 1x1, odd sizes, single-image models --------------------------------------


def test_rgba_grayscale_tiny_and_odd_sized_inputs_work(comfy, pair_model, inputs, files):
    gray = comfy.upload_image(np.asarray(Image.fromarray(_photo()).convert("L").resize((50, 40))), name="gray.png")
    one = comfy.upload_image(np.array([[[200, 30, 30]]], np.uint8), name="one_pixel.png")
    rgba = comfy.upload_image(_masked_photo(), name="rgba.png")
    def variations(n: int, image: list, prefix: str, **sampler) -> dict:
        """Nodes n+2..n+4: encode `image`, sample variations of it (seed, count, sampler, spacing, size), save."""
        return {
            str(n + 2): {"class_type": "SemanticaEncodeImage", "inputs": {"encoder": ["3", 0], "image": image}},
            str(n + 3): {"class_type": "SemanticaVariationSampler",
                         "inputs": dict(model=["2", 0], embeds=[str(n + 2), 0], steps=2, guidance=2.0, **sampler)},
            str(n + 4): {"class_type": "SaveImage", "inputs": {"images": [str(n + 3), 0], "filename_prefix": prefix}},
        }

    prompt = {
        "10": {"class_type": "LoadImage", "inputs": {"image": rgba}},
        # a 4-channel IMAGE (LoadImage alone gives RGB): the encoder composites it over white
        "11": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["10", 0], "alpha": ["10", 1]}},
        **variations(10, ["11", 0], "rgba_var", seed=5, count=1, sampler="euler", spacing="uniform", width=33,
                     height=18),
        "20": {"class_type": "LoadImage", "inputs": {"image": gray}},
        **variations(20, ["20", 0], "gray_var", seed=6, count=2, sampler="heun", spacing="karras", width=7, height=13),
        "30": {"class_type": "LoadImage", "inputs": {"image": one}},
        **variations(30, ["30", 0], "one_var", seed=7, count=1, sampler="ddim", spacing="uniform", width=0, height=0),
        "35": {"class_type": "SemanticaSDEdit", "inputs": dict(model=["2", 0], image=["30", 0], seed=8, strength=0.5,
                                                               steps=2, repeats=1, sampler="ddpm", guidance=1.0)},
        "36": {"class_type": "SaveImage", "inputs": {"images": ["35", 0], "filename_prefix": "one_sdedit"}},
        "40": {"class_type": "SemanticaSDEdit", "inputs": dict(model=["2", 0], image=["20", 0], seed=9, strength=0.5,
                                                               steps=2, repeats=1, sampler="euler", guidance=2.0,
                                                               embeds=["22", 0])},
        "41": {"class_type": "SaveImage", "inputs": {"images": ["40", 0], "filename_prefix": "gray_sdedit"}},
        "2": {"class_type": "SemanticaUNetLoader", "inputs": {"model_name": pair_model, "weights": "raw"}},
        "3": {"class_type": "SemanticaEncoderLoader", "inputs": {"encoder_name": "random-efficientnet-lite0.safetensors"}},
    }
    history = comfy.run(prompt, timeout=300)
    shapes = {nid: [im.shape for im in comfy.get_images(history, node_id=nid)]
              for nid in ("14", "24", "34", "36", "41")}
    assert shapes == {"14": [(18, 33, 3)], "24": [(13, 7, 3)] * 2, "34": [(32, 32, 3)], "36": [(1, 1, 3)],
                      "41": [(40, 50, 3)]}


def test_a_batch_of_images_gives_variations_of_every_image(comfy, pair_model, inputs):
    def prompt(images, seed):
        p = variation_prompt(pair_model, "host_test_small_photo.png", seed=seed, count=2, steps=2)
        p.update(images)
        p["4"]["inputs"]["image"] = ["b", 0]
        return p

    both = {"a": {"class_type": "LoadImage", "inputs": {"image": "host_test_stroke_painting.png"}},
            "b": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["a", 0]}}}
    batch = comfy.get_images(comfy.run(prompt(both, seed=60)))
    assert len(batch) == 4  # 2 images x 2 variations, row-major
    # the second image alone, from the seed its variations got in the batch (seed + 1 * count)
    alone = {"a": both["a"], "b": {"class_type": "ImageScale", "inputs": {  # as ImageBatch resized it
        "image": ["a", 0], "upscale_method": "bilinear", "width": 40, "height": 28, "crop": "center"}}}
    second = comfy.get_images(comfy.run(prompt(alone, seed=62)))
    from semantica_core.precision import resolve_precision

    # equal up to the rounding of the server's precision between batch sizes: one 8-bit level in float32; on the
    # bf16 fast path (a CPU with native bf16) a few bf16 eps after the steps, far below a wrong seed's tenths
    bf16 = resolve_precision(None, torch.device("cpu")).dtype == torch.bfloat16
    for got, want in zip(batch[2:], second):
        difference = np.abs(got.astype(int) - want)
        assert difference.max() <= (24 if bf16 else 1) and difference.mean() < (4 if bf16 else 1), difference.mean()
    assert np.abs(batch[0].astype(int) - batch[2]).mean() > 1  # and the two images gave different variations


def test_single_image_checkpoints_load_and_sdedit(comfy, files, inputs):
    name = files.ensure("semantica", "single-image-tiny.safetensors").name
    history = comfy.run(sdedit_prompt(name, "host_test_stroke_painting.png", seed=3, steps=2), timeout=300)
    (image,) = comfy.get_images(history)
    assert image.shape == (240, 360, 3)
    prompt = variation_prompt(name, "host_test_photo.png", seed=3, count=1, steps=1)
    files.ensure("semantica_encoders", "random-efficientnet-lite0.safetensors")
    assert_error(comfy, prompt, "SemanticaVariationSampler", "needs a pair-conditioned model", name, "SinDiffusion")


# --- bad inputs: an error that says what to do, and the server keeps serving -------------------------------------


def test_missing_model_file_is_refused_before_running(comfy, comfy_models_dir, pair_model, inputs):
    prompt = variation_prompt("missing.safetensors", "host_test_photo.png", seed=901)
    with pytest.raises(PromptError) as rejected:
        comfy.queue_prompt(prompt)
    # ComfyUI 0.3.x repeats a validate_inputs failure for every input the check reads (model_name, weights)
    errors = rejected.value.node_errors["2"]["errors"]
    assert errors and all(e["type"] in ("custom_validation_failed", "value_not_in_list") for e in errors)
    for error in errors:
        if error["type"] == "custom_validation_failed":
            assert "'missing.safetensors' was not found" in error["details"]
            assert str(comfy_models_dir / "semantica") in error["details"]
    assert_serving(comfy, pair_model, inputs, seed=902)


def test_corrupt_and_pickled_checkpoints_get_errors_that_say_what_to_do(comfy, comfy_models_dir, pair_model, inputs):
    folder = comfy_models_dir / "semantica"
    (folder / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": " + bytes(range(200)))
    torch.save({"weight": torch.zeros(3)}, folder / "pickled.safetensors")
    comfy.object_info(refresh=True)

    message = assert_error(comfy, variation_prompt("corrupt.safetensors", "host_test_photo.png", 903),
                           "SemanticaUNetLoader", "corrupt.safetensors")
    assert "re-download or re-export" in message
    assert_serving(comfy, pair_model, inputs, seed=904)
    message = assert_error(comfy, variation_prompt("pickled.safetensors", "host_test_photo.png", 905),
                           "SemanticaUNetLoader", "pickled.safetensors", "PyTorch pickle")
    assert "never unpickles" in message and "safetensors" in message
    assert_serving(comfy, pair_model, inputs, seed=906)


def test_embeds_from_another_encoder_name_both_encoders(comfy, files, pair_model, inputs):
    from semantica_core.encoders import read_encoder_spec

    other = files.ensure("semantica_encoders", "other-encoder.safetensors")
    expected = read_encoder_spec(files.path("semantica_encoders", "random-efficientnet-lite0.safetensors")).encoder_id
    prompt = variation_prompt(pair_model, "host_test_photo.png", seed=907, encoder=other.name)
    assert_error(comfy, prompt, "SemanticaVariationSampler", read_encoder_spec(other).encoder_id, expected)
    assert_serving(comfy, pair_model, inputs, seed=908)

    mix = variation_prompt(pair_model, "host_test_photo.png", seed=909)
    mix["7"] = {"class_type": "SemanticaEncoderLoader", "inputs": {"encoder_name": other.name}}
    mix["8"] = {"class_type": "SemanticaEncodeImage", "inputs": {"encoder": ["7", 0], "image": ["1", 0]}}
    mix["9"] = {"class_type": "SemanticaEmbedsMix",
                "inputs": {"embeds_a": ["4", 0], "embeds_b": ["8", 0], "weight": 0.5}}
    mix["5"]["inputs"]["embeds"] = ["9", 0]
    assert_error(comfy, mix, "SemanticaEmbedsMix", "cannot mix", expected, read_encoder_spec(other).encoder_id)
    assert_serving(comfy, pair_model, inputs, seed=910)


def test_bad_combo_values_are_refused_before_running(comfy, pair_model, inputs):
    prompt = variation_prompt(pair_model, "host_test_photo.png", seed=911, sampler="dpm_fancy")
    answer = comfy.queue_prompt(prompt, check=False)
    errors = answer["node_errors"]["5"]["errors"]
    assert errors and all(e["type"] == "custom_validation_failed" for e in errors)
    assert all("sampler 'dpm_fancy' is not one of: ddpm" in e["details"] for e in errors)
    prompt = variation_prompt(pair_model, "host_test_photo.png", seed=911, count=0)
    answer = comfy.queue_prompt(prompt, check=False)
    assert [e["type"] for e in answer["node_errors"]["5"]["errors"]] == ["value_smaller_than_min"]


# --- CLIP vision ---------------------------------------------------------------------------------------------------


def test_clip_vision_embeds_match_a_model_initialised_from_the_same_weights(comfy, files, inputs):
    from semantica_core.encoders import read_encoder_spec

    model = files.ensure("semantica", "semantica-variations-vit-l14.safetensors").name
    spec = read_encoder_spec(files.clip_encoder_file)
    assert spec.encoder_id.startswith("open_clip:ViT-L-14-quickgelu:")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "host_test_photo_b.png"}},
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "open_clip_vit_l14_openai.safetensors"}},
        "3": {"class_type": "CLIPVisionEncode",
              "inputs": {"clip_vision": ["2", 0], "image": ["1", 0], "crop": "center"}},
        "4": {"class_type": "SemanticaClipVisionEmbeds",
              "inputs": {"clip_vision": ["2", 0], "clip_vision_output": ["3", 0], "tokens": "open_clip"}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "6": {"class_type": "SemanticaUNetLoader", "inputs": {"model_name": model, "weights": "ema"}},
        "7": {"class_type": "SemanticaVariationSampler",
              "inputs": dict(model=["6", 0], embeds=["4", 0], seed=1, count=1, steps=2, guidance=2.0,
                             sampler="euler", spacing="karras", width=0, height=0)},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "clip_var"}},
    }
    history = comfy.run(prompt, timeout=600)
    (text,) = history["outputs"]["5"]["text"]
    assert f"encoder_id='{spec.encoder_id}'" in text
    assert [im.shape for im in comfy.get_images(history, node_id="8")] == [(32, 32, 3)]

    # The same images as through the exported encoder file: ComfyUI's tower computes open_clip's embeddings
    # (a 224 px photo, so that neither side resizes it)
    square = comfy.upload_image(np.asarray(Image.fromarray(_photo()).resize((224, 224), Image.BICUBIC)), name="sq.png")
    random_model = files.ensure("semantica", "random-vit-l14-tiny.safetensors").name
    sampler = dict(model=["6", 0], embeds=["4", 0], seed=77, count=2, steps=3, guidance=3.0, sampler="euler",
                   spacing="karras", width=0, height=0)
    through_clip = {k: prompt[k] for k in "12346"}
    through_clip["1"] = {"class_type": "LoadImage", "inputs": {"image": square}}
    through_clip["6"] = {"class_type": "SemanticaUNetLoader", "inputs": {"model_name": random_model, "weights": "ema"}}
    through_clip["7"] = {"class_type": "SemanticaVariationSampler", "inputs": sampler}
    through_clip["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "via_clip"}}
    through_file = dict(through_clip)
    through_file["3"] = {"class_type": "SemanticaEncoderLoader",
                         "inputs": {"encoder_name": "open_clip_vit_l14_openai.safetensors"}}
    through_file["4"] = {"class_type": "SemanticaEncodeImage", "inputs": {"encoder": ["3", 0], "image": ["1", 0]}}
    del through_file["2"]
    via_clip = comfy.get_images(comfy.run(through_clip, timeout=600), node_id="8")
    via_file = comfy.get_images(comfy.run(through_file, timeout=600), node_id="8")
    assert len(via_clip) == len(via_file) == 2
    for a, b in zip(via_clip, via_file):  # float16 storage vs float32 compute differ in the last bits only
        assert np.abs(a.astype(int) - b).max() <= 1

    # ComfyUI's raw hidden states are not what the open_clip encoder gives: another id, refused with both named
    prompt["4"]["inputs"]["tokens"] = "last_hidden_state"
    message = assert_error(comfy, prompt, "SemanticaVariationSampler", spec.encoder_id,
                           "comfy_clip_vision:ViT-L-14-quickgelu:")
    assert message.count(spec.encoder_id.split(":")[-1]) == 2  # the same weights hash in both ids
