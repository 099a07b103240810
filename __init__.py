"""ComfyUI entry point of the Semantica node pack (V3 API). Exposes `comfy_entrypoint` and nothing else.

Importing this file outside ComfyUI does nothing: ComfyUI's modules are imported only when the host calls the
entry point. Do not define NODE_CLASS_MAPPINGS here: ComfyUI would take the V1 branch and skip the entry point.
"""
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    # The pack is cloned into custom_nodes/, not pip-installed: make its library importable as `semantica_core`.
    # Appended, so the host's own top-level modules (ComfyUI's `nodes`) keep precedence.
    if _PACK_DIR not in sys.path:
        sys.path.append(_PACK_DIR)

    from .nodes import get_node_list

    class SemanticaExtension(ComfyExtension):
        async def get_node_list(self):
            return get_node_list()

    return SemanticaExtension()
