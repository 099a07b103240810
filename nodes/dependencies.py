"""Optional packages: a node that needs one says which, and how to install it, instead of a bare ImportError.

The nodes import open_clip, timm and kornia (through semantica_core) only when they run, so a missing package
disables the nodes that need it and leaves the rest of the pack working.
"""
from __future__ import annotations

from contextlib import contextmanager

# import name -> the PyPI distribution requirements.txt lists
DISTRIBUTIONS = {"open_clip": "open_clip_torch", "timm": "timm", "kornia": "kornia"}


@contextmanager
def needs_packages(node: str):
    """Turns an ImportError of an optional package inside the block into one that names it and what to do."""
    try:
        yield
    except ImportError as error:
        module = (error.name or "").split(".")[0]
        if module not in DISTRIBUTIONS:
            raise
        raise ImportError(
            f"{node} needs the Python package {DISTRIBUTIONS[module]} ({error}). Install the pack's requirements "
            f"into ComfyUI's Python: pip install -r custom_nodes/semantica/requirements.txt, then restart ComfyUI."
        ) from error
