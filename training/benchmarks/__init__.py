"""Benchmarks as functions that return their figures (dicts); `semantica bench` (training/bench.py) and
benchmarks/gpu_check.py put them in tables, and each module's main prints them (`python -m training.benchmarks.X`).
The ones that drive a ComfyUI server need the checkout and live in tools/ (bench_node_overhead, bench_ksampler)."""
