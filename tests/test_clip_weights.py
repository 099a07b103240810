"""CLIP vision weights in Hugging Face's layout (ComfyUI's) as open_clip's, on a tiny random tower."""
import pytest
import torch
from open_clip.transformer import QuickGELU, VisionTransformer

from semantica_core.encoders.base import weights_hash
from semantica_core.encoders.clip_weights import (
    float32_tensors,
    open_clip_arch,
    open_clip_tokens,
    open_clip_visual_tensors,
    pooled_vector,
    vision_layers,
)

WIDTH, LAYERS, HEADS, PATCH, SIZE, EMBED = 32, 2, 4, 8, 16, 12


def hf_vision_state_dict(seed: int = 0, dtype=torch.float16) -> dict:
    """Random weights under the names ComfyUI's (and Hugging Face's) CLIPVisionModelWithProjection uses."""
    generator = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=generator) * 0.1).to(dtype)

    v = "vision_model."
    sd = {
        v + "embeddings.class_embedding": r(WIDTH),
        v + "embeddings.patch_embedding.weight": r(WIDTH, 3, PATCH, PATCH),
        v + "embeddings.position_embedding.weight": r((SIZE // PATCH) ** 2 + 1, WIDTH),
        "visual_projection.weight": r(EMBED, WIDTH),
    }
    for norm in ("pre_layrnorm", "post_layernorm"):
        sd.update({f"{v}{norm}.weight": 1 + r(WIDTH), f"{v}{norm}.bias": r(WIDTH)})
    for i in range(LAYERS):
        p = f"{v}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd.update({f"{p}self_attn.{name}.weight": r(WIDTH, WIDTH), f"{p}self_attn.{name}.bias": r(WIDTH)})
        for norm in ("layer_norm1", "layer_norm2"):
            sd.update({f"{p}{norm}.weight": 1 + r(WIDTH), f"{p}{norm}.bias": r(WIDTH)})
        sd.update({f"{p}mlp.fc1.weight": r(4 * WIDTH, WIDTH), f"{p}mlp.fc1.bias": r(4 * WIDTH),
                   f"{p}mlp.fc2.weight": r(WIDTH, 4 * WIDTH), f"{p}mlp.fc2.bias": r(WIDTH)})
    return sd


def open_clip_tower() -> VisionTransformer:
    return VisionTransformer(image_size=SIZE, patch_size=PATCH, width=WIDTH, layers=LAYERS, heads=HEADS,
                             mlp_ratio=4.0, output_dim=EMBED, act_layer=QuickGELU, output_tokens=True).eval()


def test_renamed_weights_load_strictly_into_open_clip():
    sd = hf_vision_state_dict()
    assert vision_layers(sd) == LAYERS
    renamed = open_clip_visual_tensors(sd)
    tower = open_clip_tower()
    tower.load_state_dict(dict(renamed), strict=True)  # every open_clip name, no other
    assert all(t.dtype == torch.float32 for t in renamed.values())  # ComfyUI's float16, hashed as float32

    attn = tower.transformer.resblocks[1].attn
    q, k, v = (sd[f"vision_model.encoder.layers.1.self_attn.{p}_proj.weight"].float() for p in "qkv")
    assert torch.equal(attn.in_proj_weight, torch.cat([q, k, v]))  # q, k, v in open_clip's order
    assert torch.equal(tower.proj, sd["visual_projection.weight"].float().t())
    # The id's hash is that of open_clip's own state dict: the exported encoder file and ComfyUI's tower agree.
    assert weights_hash(renamed) == weights_hash(tower.state_dict())
    assert weights_hash(open_clip_visual_tensors(hf_vision_state_dict(seed=1))) != weights_hash(renamed)


def test_a_hugging_face_tower_computes_open_clips_tokens_and_pooled():
    transformers = pytest.importorskip("transformers")  # ComfyUI's host environment has it; the pack does not
    config = transformers.CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        image_size=SIZE, patch_size=PATCH, projection_dim=EMBED, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModelWithProjection(config).eval()
    tower = open_clip_tower()
    tower.load_state_dict(dict(open_clip_visual_tensors(hf.state_dict())), strict=True)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(pixel_values=x)
        pooled, tokens = tower(x)
        ours = open_clip_tokens(out.last_hidden_state, hf.vision_model.post_layernorm)
    assert ours.shape == tokens.shape == (2, (SIZE // PATCH) ** 2, WIDTH)
    torch.testing.assert_close(ours, tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled_vector(out.image_embeds), pooled, atol=1e-5, rtol=1e-4)


def test_siglip_per_token_embeds_are_averaged_and_pooled_ones_kept():
    per_token = torch.randn(2, 5, 8)
    assert torch.equal(pooled_vector(per_token), per_token.mean(dim=1))
    pooled = torch.randn(2, 8)
    assert pooled_vector(pooled) is pooled


def test_float32_tensors_keep_names_and_convert_on_access():
    sd = {"a": torch.ones(2, dtype=torch.float16), "b": torch.zeros(3, dtype=torch.bfloat16)}
    view = float32_tensors(sd)
    assert list(view) == ["a", "b"] and len(view) == 2
    assert view["a"].dtype == torch.float32 and torch.equal(view["a"], torch.ones(2))


def test_open_clip_arch_is_found_from_the_tower_shape():
    vit_l = {"type": "clip", "width": 1024, "layers": 24, "heads": 16, "mlp": 4096, "patch": 14,
             "image_size": 224, "embed_dim": 768, "quick_gelu": True}
    assert open_clip_arch(vit_l) == "ViT-L-14-quickgelu"  # ComfyUI's OpenAI ViT-L/14 runs quick-GELU
    assert open_clip_arch({**vit_l, "quick_gelu": False}) == "ViT-L-14"
    assert open_clip_arch({**vit_l, "image_size": 336}) == "ViT-L-14-336-quickgelu"
    assert open_clip_arch({**vit_l, "layers": 3}) is None
    assert open_clip_arch({**vit_l, "type": "siglip"}) is None
