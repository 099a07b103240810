"""`make bench`: the table of `semantica bench` (training/bench.py) with one more part that needs the checkout's
ComfyUI, `node`: time per variation through the ComfyUI node on a real server against a direct semantica_core
call (tools/bench_node_overhead.py)."""
from __future__ import annotations

import argparse

from tools import bench_node_overhead
from training import bench


def node_rows(args) -> list[tuple]:
    return bench_node_overhead.rows(bench_node_overhead.measure(
        steps=args.node_steps, repeats=args.node_repeats, device=args.device))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench.add_arguments(parser, parts=(*bench.PARTS, "node"))
    parser.add_argument("--node-steps", type=int, default=10, help="sampler steps of the node benchmark")
    parser.add_argument("--node-repeats", type=int, default=3)
    return bench.run(parser.parse_args(argv), more={"node": node_rows})


if __name__ == "__main__":
    raise SystemExit(main())
