"""SinDiffusion end to end on the CPU: train on a real photo, sample any size, outpaint, text guidance, harmonize,
evaluate; and through a real ComfyUI server with the shipped workflows (marked `host`).

The trained model is the tiny preset on skimage's chelsea at 64 px for 200 steps (about 30 s on two free cores):
far from converged, but enough to measure that training moves the samples toward the photo's patch statistics.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from semantica_core.checkpoint import load_checkpoint, read_checkpoint_metadata
from semantica_core.metrics.diversity import LPIPS, load_lpips, pairwise_distances, pairwise_diversity
from semantica_core.metrics.frechet import frechet_distance, frechet_distance_features
from semantica_core.metrics.sifid import (
    InceptionFirstBlock,
    EncoderEarlyFeatures,
    RandomConvFeatures,
    load_inception_first_block,
    sifid,
    sifid_feature_network,
)
from semantica_core.networks import PatchUNet, PatchUNetConfig
from semantica_core.single_image_train import (
    PRESETS,
    SingleImageTrainConfig,
    init_train_state,
    learning_rate,
    prepare_training_image,
    random_crops,
    save_single_image_checkpoint,
    scale_range,
    state_path_for,
    train_single_image,
)
from semantica_core.single_image import outpaint, sample_single_image
from tools import sindiffusion_curve
from tools.sindiffusion_curve import DEMO_ENCODER

TRAIN_STEPS = 200
TRAIN_SIDE = 64


def _chelsea() -> np.ndarray:
    import skimage.data

    return skimage.data.chelsea()


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(_chelsea()).save(path)
    return path


@pytest.fixture(scope="module")
def noise_photo(tmp_path_factory) -> Path:
    """A 32x24 photo of uniform noise: the curve tool's tests train a few steps on it."""
    path = tmp_path_factory.mktemp("noise") / "photo.png"
    noise = torch.randint(0, 256, (24, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(noise.numpy()).save(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(trained model, untrained model, training image [1,3,h,w] in [0, 1]): the same seed, 0 and 200 steps.
    Training that long takes minutes on a busy CPU: the tests that use it are marked slow (not in `make test-fast`)."""
    folder = tmp_path_factory.mktemp("single")
    config = SingleImageTrainConfig.from_preset("sindiffusion_tiny", max_side=TRAIN_SIDE, batch_size=8, lr=1e-3)
    state = init_train_state(_as_tensor(_chelsea()), config, "cpu")
    save_single_image_checkpoint(folder / "untrained.safetensors", state)
    train_single_image(None, steps=TRAIN_STEPS, state=state)
    save_single_image_checkpoint(folder / "trained.safetensors", state, source_image="chelsea")
    real = state.image.add(1).div(2)
    return load_checkpoint(folder / "trained.safetensors"), load_checkpoint(folder / "untrained.safetensors"), real


# --- training: data, resume, the checkpoint ----------------------------------------------------------------------


def test_training_image_keeps_aspect_and_never_enlarges():
    image = torch.rand(1, 3, 300, 451)
    assert prepare_training_image(image, 250).shape[-2:] == (166, 250)
    assert prepare_training_image(torch.rand(1, 3, 40, 60), 250).shape[-2:] == (40, 60)
    with pytest.raises(ValueError, match="one RGB image"):
        prepare_training_image(torch.rand(2, 3, 40, 60), 250)


def test_a_crop_batch_holds_windows_of_the_image_at_random_places_and_the_whole_image_without_it():
    image = torch.rand(1, 3, 20, 28)
    config = SingleImageTrainConfig.from_preset("sindiffusion_tiny", batch_size=6, crop=0.5)
    batch = random_crops(image, torch.Generator().manual_seed(0), config, multiple=4)
    assert batch.shape == (6, 3, 8, 12)  # 10 and 14 px, rounded down to the multiple
    places = []
    for row in batch:
        found = [(top, left) for top in range(20 - 8 + 1) for left in range(28 - 12 + 1)
                 if torch.equal(image[0, :, top:top + 8, left:left + 12], row)]
        assert len(found) == 1  # the exact pixels of one window, not resampled
        places += found
    assert len(set(places)) > 1
    again = random_crops(image, torch.Generator().manual_seed(0), config, multiple=4)
    assert torch.equal(batch, again)  # the data generator decides the places
    whole = random_crops(image, torch.Generator(), SingleImageTrainConfig.from_preset("sindiffusion_tiny"), 4)
    assert whole.shape == (8, 3, 20, 28) and torch.equal(whole[7], image[0])
    with pytest.raises(ValueError, match="crop must be in"):
        SingleImageTrainConfig.from_preset("sindiffusion_tiny", crop=0.0)


def test_progressive_size_trains_the_first_fraction_of_the_run_small_and_the_rest_at_the_papers_scales():
    config = SingleImageTrainConfig.from_preset("sindiffusion_tiny", max_side=32, batch_size=1, small_fraction=0.5,
                                                small_scale_min=0.5, small_scale_max=0.5, scale_min=1.0,
                                                scale_max=1.0)
    assert [scale_range(config, step, 6) for step in range(6)] == [(0.5, 0.5)] * 3 + [(1.0, 1.0)] * 3
    state = init_train_state(torch.rand(1, 3, 32, 32), config, "cpu")
    sizes = []
    state.network.register_forward_pre_hook(lambda network, args: sizes.append(tuple(args[0].shape[-2:])))
    train_single_image(None, steps=4, state=state)
    assert sizes == [(16, 16), (16, 16), (32, 32), (32, 32)]
    assert SingleImageTrainConfig.from_preset("sindiffusion").small_fraction == 0  # the paper's preset: full size
    with pytest.raises(ValueError, match="small_fraction in"):
        SingleImageTrainConfig.from_preset("sindiffusion_tiny", small_fraction=1.5)


def test_learning_rate_warms_up_then_follows_the_cosine_to_its_final_fraction():
    config = SingleImageTrainConfig.from_preset("sindiffusion_tiny", lr=1e-3, warmup_steps=10, lr_decay="cosine",
                                                lr_final=0.1)
    rates = [learning_rate(config, step, 110) for step in range(110)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)  # linear warm-up from lr / 10
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))  # then never rising
    assert rates[-1] == pytest.approx(1e-4)  # lr * lr_final at the last step
    constant = SingleImageTrainConfig.from_preset("sindiffusion_tiny", lr=1e-3, warmup_steps=0, lr_decay="constant")
    assert {learning_rate(constant, step, 50) for step in range(50)} == {1e-3}
    with pytest.raises(ValueError, match="lr_decay one of constant, cosine"):
        SingleImageTrainConfig.from_preset("sindiffusion_tiny", lr_decay="linear")


def test_presets_carry_their_recipe_and_flags_override_it():
    tiny = SingleImageTrainConfig.from_preset("sindiffusion_tiny")
    assert (tiny.lr, tiny.warmup_steps, tiny.lr_decay, tiny.ema_decay) == (2e-3, 100, "constant", 0.999)
    assert tiny.small_fraction == 0.9
    paper = SingleImageTrainConfig.from_preset("sindiffusion")
    assert (paper.lr, paper.lr_decay, paper.ema_decay) == (5e-4, "constant", 0.9999)
    assert SingleImageTrainConfig.from_preset("sindiffusion_tiny", lr=1e-3, ema_decay=None).lr == 1e-3
    assert SingleImageTrainConfig.from_preset("sindiffusion_tiny", ema_decay=None).ema_decay == 0.999


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: channels-last weights, moments read from a file
def test_cli_resume_continues_the_same_run(photo_file, tmp_path, precision):
    from training.train_single import main

    # A resume to a new total follows that total's schedule (the cosine, progressive size's share), so this run of 3
    # continued to 6 equals a straight 6 only in the warm-up and at one size.
    common = ["--preset", "sindiffusion_tiny", "--size", "16", "--batch-size", "2", "--seed", "3", "--device", "cpu",
              "--set", "small_fraction=0", "--precision", precision]
    straight, split = tmp_path / "straight.safetensors", tmp_path / "split.safetensors"
    assert main([str(photo_file), "--output", str(straight), "--max-steps", "6", *common]) == 0
    assert main([str(photo_file), "--output", str(split), "--max-steps", "3", *common]) == 0
    assert state_path_for(split).is_file()
    # a second run without --resume must not silently discard the state
    assert main([str(photo_file), "--output", str(split), "--max-steps", "6", *common]) == 2
    assert main([str(photo_file), "--output", str(split), "--max-steps", "6", "--resume", "--device", "cpu",
                 "--precision", precision]) == 0
    a, b = load_checkpoint(straight), load_checkpoint(split)
    for (name, p), q in zip(a.network.state_dict().items(), b.network.state_dict().values()):
        assert torch.equal(p, q), name
    info = read_checkpoint_metadata(split)
    assert info["kind"] == "single_image" and info["has_ema"]
    training = info["training"]
    assert training["steps"] == 6 and (training["source_width"], training["source_height"]) == (451, 300)
    assert (training["train_width"], training["train_height"]) == (16, 11)
    assert training["source_image"] == str(photo_file.resolve())


@pytest.mark.slow
def test_receptive_field_is_reported(trained):
    model, _, _ = trained
    tiny = PatchUNet(PatchUNetConfig.from_dict(PRESETS["sindiffusion_tiny"]["network"]))
    assert model.training_info["receptive_field"] == tiny.receptive_field() == 45
    assert PatchUNet(PatchUNetConfig.from_dict(PRESETS["sindiffusion"]["network"])).receptive_field() == 101


# --- what training achieves ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_moves_samples_toward_the_photos_patch_statistics(trained):
    model, untrained, real = trained
    features = RandomConvFeatures()
    after = sample_single_image(model, seed=10, count=6, steps=20, sampler="dpmpp_2m")
    before = sample_single_image(untrained, seed=10, count=6, steps=20, sampler="dpmpp_2m")
    sifid_after, sifid_before = sifid(features, real, after), sifid(features, real, before)
    print(f"substitute SIFID (median of 6): untrained {sifid_before.median():.3f}, "
          f"{TRAIN_STEPS} steps {sifid_after.median():.3f}")
    assert sifid_after.median() < 0.5 * sifid_before.median()
    # samples differ from each other and are not copies of the photo
    assert pairwise_diversity(after) > 0.03
    to_photo = (after - real).abs().flatten(1).mean(1)
    print(f"mean |sample - photo| per sample: {[round(float(d), 3) for d in to_photo]}")
    assert to_photo.min() > 0.03


@pytest.mark.slow
def test_samples_at_twice_the_width(trained):
    model, _, real = trained
    height, width = real.shape[-2:]
    wide = sample_single_image(model, seed=1, count=2, width=2 * width, steps=10)
    assert wide.shape == (2, 3, height, 2 * width)
    assert 0 <= wide.min() and wide.max() <= 1
    # image k depends only on seed + k
    alone = sample_single_image(model, seed=2, count=1, width=2 * width, steps=10)
    # float32: identical to rounding; the bf16 fast path rounds differently per batch size, to a few bf16 eps
    bf16 = model.denoiser.resolved_precision(wide.device).dtype == torch.bfloat16
    assert torch.allclose(alone[0], wide[1], atol=4 * torch.finfo(torch.bfloat16).eps if bf16 else 1e-5)


@pytest.mark.slow
def test_outpaint_keeps_the_known_region_exactly(trained):
    model, _, real = trained
    out = outpaint(model, real, left=6, right=13, top=5, bottom=2, seed=4, steps=20, sampler="ddpm")
    height, width = real.shape[-2:]
    assert out.shape == (1, 3, height + 7, width + 19)
    assert torch.equal(out[:, :, 5 : 5 + height, 6 : 6 + width], real)
    new_area = torch.cat([out[:, :, :, :6].flatten(), out[:, :, :, 6 + width :].flatten()])
    assert new_area.std() > 0.02  # filled with content, not a flat colour
    with pytest.raises(ValueError, match="margins"):
        outpaint(model, real, left=-1, seed=0)


@pytest.mark.slow
def test_harmonization_through_sdedit_images(trained):
    from semantica_core.pipeline import sdedit_images

    model, _, real = trained
    composite = real.clone()
    composite[:, :, 10:25, 20:40] = torch.tensor([0.1, 0.3, 0.9]).view(1, 3, 1, 1)  # a pasted blue patch
    mask = torch.zeros(1, 1, *real.shape[-2:])
    mask[:, :, 10:25, 20:40] = 1
    out = sdedit_images(model, composite, seed=0, t0=0.5, steps=20, mask=mask)
    assert torch.equal(out[mask.expand_as(out) == 0], composite[mask.expand_as(out) == 0])
    inside = out[:, :, 10:25, 20:40]
    blue = torch.tensor([0.1, 0.3, 0.9]).view(1, 3, 1, 1)
    assert (inside - blue).abs().mean() > 0.05  # the pasted patch took on the photo's colours


# --- text guidance -------------------------------------------------------------------------------------------------


def tiny_clip():
    """A random open_clip model from a custom config (open_clip.CLIP takes the config dicts directly); the BPE
    tokenizer ships with open_clip, so nothing is downloaded."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    return model.eval(), open_clip.get_tokenizer("ViT-B-32")


@pytest.mark.slow
def test_text_guidance_moves_clip_similarity_toward_the_prompt(trained):
    from semantica_core.text_guidance import ClipScorer, sample_text_guided

    model, _, _ = trained
    clip, tokenizer = tiny_clip()
    prompt = "a red cat on a blue sofa"
    scorer = ClipScorer(clip, tokenizer, prompt)
    unguided = sample_text_guided(model, prompt, clip, tokenizer, 0.0, seed=7, count=3, steps=20)
    assert torch.equal(unguided, sample_single_image(model, seed=7, count=3, steps=20, sampler="ddpm"))
    guided = sample_text_guided(model, prompt, clip, tokenizer, 0.05, seed=7, count=3, steps=20)
    with torch.no_grad():
        before, after = scorer(unguided), scorer(guided)
    print(f"CLIP similarity unguided {before.tolist()} guided {after.tolist()}")
    assert (after > before).all()


def test_load_clip_names_a_missing_file(tmp_path):
    from semantica_core.text_guidance import load_clip

    with pytest.raises(FileNotFoundError, match="does not download"):
        load_clip("ViT-B-32", tmp_path / "missing.safetensors")


# --- metrics -------------------------------------------------------------------------------------------------------


def test_frechet_distance_of_known_gaussians():
    # N(0, I) vs N(m, 4I) in 3-D: |m|^2 + tr(I + 4I - 2*2I) = |m|^2 + 3
    mu = torch.tensor([1.0, 2.0, 0.0])
    d = frechet_distance(torch.zeros(3), torch.eye(3), mu, 4 * torch.eye(3))
    assert abs(float(d) - (5.0 + 3.0)) < 1e-9
    x = torch.randn(400, 5, generator=torch.Generator().manual_seed(0))
    assert float(frechet_distance_features(x, x)) < 1e-8


def test_sifid_is_zero_for_the_image_itself_and_grows_with_change():
    real = _as_tensor(_chelsea())[:, :, ::4, ::4]
    noisy = (real + 0.2 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    values = sifid(RandomConvFeatures(), real, torch.cat([real, noisy, real.flip(-1)]))
    assert values[0] < 1e-6 and values[1] > 10 * values[2] > 0


def test_sifid_on_the_demo_encoders_early_stages_tells_structure_from_a_blur():
    from kornia.filters import gaussian_blur2d

    features = sifid_feature_network(encoder_path=DEMO_ENCODER)
    assert "efficientnet" in features.label and "stride-4" in features.label and not features.comparable
    real = _as_tensor(_chelsea())[:, :, ::4, ::4]
    assert features(real).shape[-2:] == tuple(-(-side // 4) for side in real.shape[-2:])  # "same" padding
    blurred = gaussian_blur2d(real, (9, 9), (3.0, 3.0))  # the colours without the structure
    values = sifid(features, real, torch.cat([real, real.flip(-1), blurred]))
    assert values[0] < 1e-6 and values[2] > 3 * values[1] > 0
    with pytest.raises(ValueError, match="not both"):
        sifid_feature_network(DEMO_ENCODER, DEMO_ENCODER)


def test_sifid_features_refuse_an_encoder_without_cnn_stages():
    from semantica_core.encoders.timm_backend import build_timm_encoder, create_timm_model

    vit = build_timm_encoder("vit_tiny_patch16_224", create_timm_model("vit_tiny_patch16_224", img_size=32), "random",
                             image_size=32, kwargs={"img_size": 32})
    with pytest.raises(ValueError, match="EfficientNet"):
        EncoderEarlyFeatures(vit)


def test_inception_weights_load_from_a_torchvision_state_dict(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=True)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    block = load_inception_first_block(path)
    assert torch.equal(block.Conv2d_2b_3x3.conv.weight, net.Conv2d_2b_3x3.conv.weight)
    assert block(torch.rand(1, 3, 64, 96)).shape[1] == 64
    assert sifid_feature_network(path).comparable and not sifid_feature_network(None).comparable
    with pytest.raises(FileNotFoundError, match="substitute"):
        sifid_feature_network(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an InceptionV3"):
        load_inception_first_block(tmp_path / "other.safetensors")
    assert isinstance(block, InceptionFirstBlock)


def test_lpips_weights_in_the_lpips_package_layout(tmp_path):
    from safetensors.torch import save_file

    reference = LPIPS()
    state = {}
    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    for key, value in reference.features.state_dict().items():
        index = int(key.split(".")[0])
        state[f"net.slice{slices[index]}.{key}"] = value
    for k, lin in enumerate(reference.lins):
        state[f"lin{k}.model.1.weight"] = lin.weight.detach().abs()
    save_file(state, str(tmp_path / "lpips.safetensors"))
    lpips = load_lpips(tmp_path / "lpips.safetensors")
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    same = pairwise_distances(torch.cat([images[:1], images[:1]]), lpips)
    assert float(same) == 0 and pairwise_diversity(images, lpips) > 0
    assert pairwise_distances(images, "l1").shape == (3,)


# --- evaluation CLI ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_eval_single_reports_median_and_spread(trained, photo_file, tmp_path):
    from training.eval_single import main

    model, _, _ = trained
    out = tmp_path / "eval.json"
    assert main([model.path, "--images", str(photo_file), "--samples", "4", "--steps", "10", "--device", "cpu",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert not report["sifid_comparable_to_published"] and "substitute" in report["sifid_features"]
    assert "substitute" in report["diversity_distance"]
    (result,) = report["models"]
    assert set(result["sifid"]) == {"mean", "median", "q25", "q75", "iqr"} and len(result["sifid_per_sample"]) == 4
    assert result["sifid"]["q25"] <= result["sifid"]["median"] <= result["sifid"]["q75"]
    assert main([model.path, "--samples", "2", "--steps", "2", "--device", "cpu"]) == 2  # "chelsea" is no file


# --- through a real ComfyUI server ---------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows"


def _workflow_prompt(comfy, name: str, image: str, train_size: int = 32, **node_inputs) -> dict:
    """A shipped workflow as an API prompt, with a tiny quick training and `node_inputs` overrides per node type."""
    from tools.hostctl import ui_to_api

    api = ui_to_api(json.loads((WORKFLOWS / name).read_text()), comfy.object_info(refresh=True))
    for node in api.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image
        if node["class_type"] == "SinDiffusionTrain":
            node["inputs"].update(steps=5, size=train_size, preset="sindiffusion_tiny")
            node["inputs"]["model_name"] = f"host_test_{name.removesuffix('.json')}"
        node["inputs"].update(node_inputs.get(node["class_type"], {}))
    return api


def _output(comfy, history, api, class_type: str) -> list[np.ndarray]:
    (node_id,) = [nid for nid, node in api.items() if node["class_type"] == "SaveImage"
                  and api[node["inputs"]["images"][0]]["class_type"] == class_type]
    return comfy.get_images(history, node_id=node_id)


@pytest.mark.host
def test_host_sample_twice_the_training_width(comfy):
    photo = comfy.upload_image(_chelsea(), name="sindiffusion_chelsea.png")
    api = _workflow_prompt(comfy, "sindiffusion_train_your_photo.json", photo,
                           SinDiffusionSample={"width": 64, "height": 0, "count": 2, "steps": 4})
    history = comfy.run(api, timeout=600)
    images = _output(comfy, history, api, "SinDiffusionSample")
    assert [im.shape for im in images] == [(21, 64, 3)] * 2  # trained at 32 x 21: twice the width
    assert np.abs(images[0].astype(int) - images[1]).mean() > 1


@pytest.mark.host
def test_host_outpaint_keeps_the_photo_exactly(comfy):
    """The outpainting template on the embedded rocket model and the pack's example photo at the model's scale."""
    from tools.hostctl import ui_to_api

    api = ui_to_api(json.loads((WORKFLOWS / "sindiffusion_outpainting.json").read_text()), comfy.object_info())
    (outpaint_id,) = [nid for nid, node in api.items() if node["class_type"] == "SinDiffusionOutpaint"]
    api[outpaint_id]["inputs"]["steps"] = 4
    history = comfy.run(api, timeout=600)
    (out,) = _output(comfy, history, api, "SinDiffusionOutpaint")
    photo = np.asarray(Image.open(REPO_ROOT / "assets" / "inputs" / "semantica_example_rocket.png").convert("RGB"))
    left, right = api[outpaint_id]["inputs"]["left"], api[outpaint_id]["inputs"]["right"]
    assert out.shape == (75, left + 112 + right, 3)
    assert np.array_equal(out[:, left:left + 112], photo)


@pytest.mark.host
def test_host_text_guided_and_harmonization_workflows_run(comfy, comfy_models_dir):
    import open_clip
    from safetensors.torch import save_file

    # a random ViT-S-32 (the smallest stock open_clip architecture) stands in for the workflow's ViT-B-32 weights
    clip_file = comfy_models_dir / "open_clip" / "host_test_vit_s32.safetensors"
    if not clip_file.exists():
        clip_file.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model("ViT-S-32")
        save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(clip_file))
    photo = comfy.upload_image(_chelsea(), name="sindiffusion_chelsea.png")
    api = _workflow_prompt(comfy, "with_your_files/sindiffusion_text_guided.json", photo, SinDiffusionTextGuided={
        "clip_name": clip_file.name, "clip_arch": "ViT-S-32", "count": 1, "steps": 3})
    (image,) = _output(comfy, comfy.run(api, timeout=600), api, "SinDiffusionTextGuided")
    assert image.shape == (75, 112, 3)  # the embedded rocket model's training size

    from tools.hostctl import ui_to_api

    api = ui_to_api(json.loads((WORKFLOWS / "sindiffusion_harmonization.json").read_text()), comfy.object_info())
    for node in api.values():
        if node["class_type"] == "SemanticaSDEdit":
            node["inputs"]["steps"] = 3
    (image,) = _output(comfy, comfy.run(api, timeout=600), api, "SemanticaSDEdit")
    assert image.shape == (75, 112, 3)


@pytest.mark.host
def test_host_training_again_with_the_same_inputs_loads_the_saved_model(comfy, comfy_models_dir):
    """SinDiffusion Train keys its file by the picture and the settings: after ComfyUI forgets its cache (as after a
    restart), the same inputs load that file instead of training and writing another."""
    photo = comfy.upload_image(_chelsea(), name="sindiffusion_reuse.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": photo}},
        "2": {"class_type": "SinDiffusionTrain", "inputs": {"image": ["1", 0], "steps": 3, "size": 24, "preset": "auto",
                                                            "seed": 5, "model_name": "host_test_reuse"}},
        "3": {"class_type": "SinDiffusionSample", "inputs": {"model": ["2", 0], "width": 0, "height": 0, "seed": 1,
                                                             "count": 1, "steps": 2, "sampler": "ddim"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "host_test_reuse"}},
    }
    files = lambda: sorted(p.name for p in (comfy_models_dir / "semantica").glob("host_test_reuse*"))  # noqa: E731
    (first,) = comfy.get_images(comfy.run(prompt, timeout=600))
    assert files() == ["host_test_reuse.safetensors"]
    info = read_checkpoint_metadata(comfy_models_dir / "semantica" / "host_test_reuse.safetensors")
    assert info["training"]["preset"] == "sindiffusion_tiny" and info["training"]["steps"] == 3  # auto on a CPU
    comfy.http.post(comfy.url + "/free", json={"free_memory": True, "unload_models": True}, timeout=30)
    history = comfy.run(prompt, timeout=600)
    (again,) = comfy.get_images(history)
    assert files() == ["host_test_reuse.safetensors"], "the same inputs trained and saved a second model"
    assert np.array_equal(first, again)
    prompt["2"]["inputs"]["seed"] = 6  # another run: trained and saved under the next free name
    comfy.run(prompt, timeout=600)
    assert files() == ["host_test_reuse.safetensors", "host_test_reuse_00001.safetensors"]


@pytest.mark.slow
def test_recipe_curve_tool_measures_every_checkpoint_and_resumes_measuring(photo_file, tmp_path):
    out = tmp_path / "curve"
    args = ["--photo", str(photo_file), "--recipe", "before", "--steps", "2", "--every", "1", "--samples", "2",
            "--output", str(out)]
    assert sindiffusion_curve.main(args) == 0
    run = json.loads((out / "curve.json").read_text())
    assert [p["step"] for p in run["points"]] == [1, 2]
    assert all(p["sifid"]["median"] > 0 and len(p["sifid_per_sample"]) == 2 for p in run["points"])
    assert all("efficientnet" in p["sifid_features"] and p["sifid_substitute"]["median"] > 0 for p in run["points"])
    assert all(p["train_seconds"] > 0 for p in run["points"])
    assert Image.open(out / "samples-000002.png").size[0] > 0
    assert load_checkpoint(out / "step-000002.safetensors").training_info["config"]["lr_decay"] == "constant"  # before
    (out / "curve.json").unlink()
    assert sindiffusion_curve.main([*args, "--evaluate-only"]) == 0
    again = json.loads((out / "curve.json").read_text())
    assert [p["sifid"]["median"] for p in again["points"]] == [p["sifid"]["median"] for p in run["points"]]

    # Another sampler measures the same checkpoints into its own file, beside the default sampler's figures
    assert sindiffusion_curve.main([*args, "--evaluate-only", "--sampler", "ddpm", "--sampler-steps", "3"]) == 0
    ddpm = json.loads((out / "curve-ddpm-3.json").read_text())
    assert (ddpm["sampler"], ddpm["sampler_steps"]) == ("ddpm", 3) and [p["step"] for p in ddpm["points"]] == [1, 2]
    assert [p["sifid"]["median"] for p in ddpm["points"]] != [p["sifid"]["median"] for p in run["points"]]
    assert json.loads((out / "curve.json").read_text()) == again and (out / "samples-000002-ddpm-3.png").is_file()


@pytest.mark.slow
def test_further_averages_are_written_and_the_warm_up_two_average_is_the_mean_of_every_weight(noise_photo, tmp_path):
    out = tmp_path / "run"
    assert sindiffusion_curve.main(["--photo", str(noise_photo), "--steps", "2", "--every", "1", "--samples", "2",
                                    "--extra-ema", "0", "--extra-ema-warmup", "2", "--output", str(out)]) == 0

    recipes = {folder: json.loads((out / folder / "curve.json").read_text())["recipe"]
               for folder in (".", "ema-0", "ema-warmup-2")}
    assert recipes == {".": "default", "ema-0": "default, raw weights",
                       "ema-warmup-2": "default, EMA warm-up (1 + n) / (2 + n)"}
    for folder in (".", "ema-0", "ema-warmup-2"):
        points = json.loads((out / folder / "curve.json").read_text())["points"]
        assert [p["step"] for p in points] == [1, 2] and all(p["sifid"]["median"] > 0 for p in points)

    # (1 + n) / (2 + n) gives update n the weight 1 / (n + 2): the average of the initial weights and each step's
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the run's seed: init_train_state builds the network the same way
        initial = PatchUNet(PatchUNetConfig.from_dict(PRESETS["sindiffusion_tiny"]["network"])).state_dict()
    raw = [load_file(out / f"step-00000{step}.safetensors") for step in (1, 2)]
    average = load_file(out / "ema-warmup-2" / "step-000002.safetensors")
    names = [k for k in initial if initial[k].is_floating_point() and f"ema.{k}" in average]
    assert names
    # The first steps move the weights by about the warm-up's learning rate (2e-5), so compare to float32's rounding
    # of weights below 1 (a few 1e-8), and check that the last weights are far outside that.
    moved = 0.0
    for name in names:
        mean = (initial[name] + raw[0][f"model.{name}"] + raw[1][f"model.{name}"]) / 3
        torch.testing.assert_close(average[f"ema.{name}"], mean, rtol=1e-6, atol=1e-7)
        moved = max(moved, (raw[1][f"model.{name}"] - mean).abs().max().item())
    assert moved > 1e-5


@pytest.mark.slow
def test_small_first_sets_the_runs_progressive_size(noise_photo, tmp_path):
    out = tmp_path / "run"
    assert sindiffusion_curve.main(["--photo", str(noise_photo), "--recipe", "full-size", "--steps", "3", "--every",
                                    "1", "--samples", "2", "--small-first", "0.5", "0.6", "2", "--output",
                                    str(out)]) == 0
    config = load_checkpoint(out / "step-000003.safetensors").training_info["config"]
    assert (config["small_scale_min"], config["small_scale_max"]) == (0.5, 0.6)
    assert round(config["small_fraction"] * 3) == 2
    run = json.loads((out / "curve.json").read_text())
    assert run["small_first"] == [0.5, 0.6, 2] and [p["step"] for p in run["points"]] == [1, 2, 3]


def test_a_warm_up_offset_of_one_or_less_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sindiffusion_curve.main(["--photo", "astronaut", "--output", str(tmp_path), "--extra-ema-warmup", "1"])
    assert "K > 1" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted(sindiffusion_curve.RECIPES))
def test_every_curve_recipe_is_a_valid_tiny_config(recipe):
    config = SingleImageTrainConfig.from_preset("sindiffusion_tiny", **sindiffusion_curve.RECIPES[recipe])
    assert SingleImageTrainConfig.from_dict(config.to_dict()) == config  # as stored in the checkpoint
