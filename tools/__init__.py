"""Developer tools that drive a real ComfyUI host (tests, `make comfyui`, the demo). Not loaded by ComfyUI."""
