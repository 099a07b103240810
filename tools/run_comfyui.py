"""`make comfyui`: the real ComfyUI with this pack, in the foreground, until Ctrl-C or SIGTERM.

The pack is linked into BASE/custom_nodes/semantica; models, inputs and outputs live under BASE. Arguments after
`--` go to ComfyUI's main.py (e.g. `-- --preview-method auto`).
"""
import argparse
import signal
import sys
from pathlib import Path

from tools.hostctl import ComfyServer, default_comfy_dir, semantica_home


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, default=default_comfy_dir(), help="the unpacked ComfyUI (make setup)")
    parser.add_argument("--base", type=Path, default=semantica_home() / "comfy-base", help="ComfyUI's base directory")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--cpu", action="store_true", default=None,
                        help="run on the CPU (default: the CPU only when torch sees no GPU)")
    args = parser.parse_args(argv)

    server = ComfyServer(args.base, comfy_dir=args.comfyui, port=args.port, listen=args.listen, cpu=args.cpu,
                         extra_args=extra)

    def stop_on_signal(signum, frame):
        raise KeyboardInterrupt

    # Set explicitly: a shell starts background jobs with SIGINT ignored, and Python would keep it that way.
    signal.signal(signal.SIGINT, stop_on_signal)
    signal.signal(signal.SIGTERM, stop_on_signal)
    try:
        server.start(timeout=300)
        print(f"\nComfyUI with the Semantica nodes: {server.url}  (models in {server.models_dir}; Ctrl-C stops)\n",
              flush=True)
        code = server.wait()
        print(f"ComfyUI exited with code {code}", file=sys.stderr)
        return code or 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
