"""The pack's ComfyUI nodes: thin V3 adapters over semantica_core.

NODE_IDS is plain data so tests and tools can read it without a ComfyUI host; `get_node_list()` imports the
node modules (and with them ComfyUI) only when the host asks for them.
"""
from __future__ import annotations

NODE_IDS = [
    "SemanticaImagePrep",
    "SemanticaEncoderLoader",
    "SemanticaUNetLoader",
    "SemanticaEncodeImage",
    "SemanticaClipVisionEmbeds",
    "SemanticaEmbedsMix",
    "SemanticaVariationSampler",
    "SemanticaSDEdit",
    "SinDiffusionTrain", "SinDiffusionSample", "SinDiffusionOutpaint", "SinDiffusionTextGuided",
    "SemanticaKSamplerModelLoader", "SemanticaConditioning", "SemanticaEmptyLatent",
]


def get_node_list() -> list:
    from .folders import install_example_inputs, register_folders

    register_folders()  # before any schema lists files from the folders
    install_example_inputs()  # the templates' LoadImage nodes name these files

    from .embeds import SemanticaClipVisionEmbeds, SemanticaEmbedsMix, SemanticaEncodeImage
    from .image import SemanticaImagePrep
    from .loaders import SemanticaEncoderLoader, SemanticaUNetLoader
    from .sampling import SemanticaSDEdit, SemanticaVariationSampler
    from .sindiffusion import NODES as SINDIFFUSION_NODES
    from .comfy_bridge import NODES as KSAMPLER_NODES

    nodes = [
        SemanticaImagePrep,
        SemanticaEncoderLoader,
        SemanticaUNetLoader,
        SemanticaEncodeImage,
        SemanticaClipVisionEmbeds,
        SemanticaEmbedsMix,
        SemanticaVariationSampler,
        SemanticaSDEdit,
        *SINDIFFUSION_NODES,
        *KSAMPLER_NODES,
    ]
    ids = [node.GET_SCHEMA().node_id for node in nodes]
    if ids != NODE_IDS:
        raise RuntimeError(f"nodes/__init__.py: NODE_IDS {NODE_IDS} does not match the node classes {ids}")
    return nodes
