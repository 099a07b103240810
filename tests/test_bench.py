"""`semantica bench` reads the benchmark scripts' printed summaries into its table."""
from training.bench import node_rows

NODE_SUMMARY = """settings: preset tiny, 64x64, 4 variations, 10 steps, dpmpp_2m, guidance 3.0, device cpu
wall-clock: node (HTTP submit -> history, incl. PNG save) median 1.958 s per prompt (0.490 s per variation, min 1.863); core (sample_variations) median 1.834 s (0.458 s per variation, min 1.693)
  ratio node / core: 1.068 of medians, 1.100 of minima (goal <= 1.05)
CPU time: node (HTTP submit -> history, incl. PNG save) median 3.718 s per prompt (0.929 s per variation, min 3.631); core (sample_variations) median 3.652 s (0.913 s per variation, min 3.300)
  ratio node / core: 1.018 of medians, 1.100 of minima (goal <= 1.05)
"""


def test_node_overhead_summary_becomes_two_rows():
    rows = node_rows(NODE_SUMMARY, steps=10, repeats=3)
    assert [r[:3] for r in rows] == [
        ("node vs direct call, wall-clock (s/variation)", "0.490", "0.458"),
        ("node vs direct call, CPU time (s/variation)", "0.929", "0.913"),
    ]
    assert rows[0][3].startswith("ratio 1.068") and rows[1][3].startswith("ratio 1.018")


def test_an_unexpected_summary_gives_no_rows():
    assert node_rows("Traceback (most recent call last): ...", steps=10, repeats=3) == []
