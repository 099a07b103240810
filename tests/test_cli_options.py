"""One vocabulary for every `semantica` sub-command (--output, --device, --precision); the old flag names still
parse to the same values and say, in one line each, what replaced them."""
import pytest

from training.cli import build_parser, main


@pytest.mark.parametrize("old, new", [
    (["train", "pairs", "--output-dir", "run", "--cpu", "--mixed-precision", "no"],
     ["train", "pairs", "--output", "run", "--device", "cpu", "--precision", "fp32"]),
    (["train", "single", "a.png", "--out", "m.safetensors", "--no-bf16"],
     ["train", "single", "a.png", "--output", "m.safetensors", "--precision", "fp32"]),
    (["encoder", "export", "resnet10t", "--out", "e.safetensors"],
     ["encoder", "export", "resnet10t", "--output", "e.safetensors"]),
    (["init", "--encoder", "e", "--preset", "tiny", "--out", "m.safetensors"],
     ["init", "--encoder", "e", "--preset", "tiny", "--output", "m.safetensors"]),
], ids=lambda argv: " ".join(argv[:2]))
def test_old_flags_are_aliases_that_say_so(old, new, capsys):
    parser = build_parser()
    assert capsys.readouterr().err == ""
    args_new = vars(parser.parse_args(new))
    assert capsys.readouterr().err == ""
    args_old = vars(parser.parse_args(old))
    lines = capsys.readouterr().err.strip().splitlines()
    assert args_old == args_new
    replaced = [a for a in old if a.startswith("--") and a not in new]
    assert len(lines) == len(replaced) and all("is deprecated; use --" in line for line in lines), lines
    assert all(any(flag in line for line in lines) for flag in replaced)


def test_mixed_precision_keeps_only_the_vocabulary(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "pairs", "--mixed-precision", "fp16"])
    assert exit_info.value.code == 2 and "precision must be one of auto, bf16, fp32" in capsys.readouterr().err


def test_output_is_required_where_there_is_no_default(tmp_path, capsys):
    assert main(["init", "--encoder", str(tmp_path / "e"), "--preset", "tiny"]) == 2
    assert "--output is required" in capsys.readouterr().err


def test_a_device_that_is_not_there_is_a_user_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    photo = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(photo)
    assert main(["train", "single", str(photo), "--output", str(tmp_path / "m.safetensors"), "--device", "cuda"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err
