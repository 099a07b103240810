"""The failures a CLI user meets give one line that says what failed and what to do, and exit status 2, the same
for every sub-command (README, "Exit status"); a full disk or a read-only folder leaves the last good files in
place. The disk and folder cases run the real CLI on a small tmpfs (they need root to mount one, and say so)."""
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.cli import main

from helpers import cli_env

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(text: str, *fragments: str) -> str:
    """The one error line among what a command wrote to stderr (progress bars aside)."""
    lines = [line for line in text.replace("\r", "\n").splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("argv", [
    ["encoder", "info", "{missing}"],
    ["checkpoint", "info", "{missing}"],
    ["init", "--encoder", "{missing}", "--preset", "tiny", "--output", "{tmp}/model.safetensors"],
    ["train", "single", "{missing}.png", "--output", "{tmp}/model.safetensors"],
    ["train", "pairs", "--data", "{missing}", "--encoder", "{missing}", "--output", "{tmp}/run"],
    ["embed", "--data", "{missing}", "--encoder", "{missing}", "--output", "{tmp}/cache"],
    ["eval", "single", "{missing}"],
    ["eval", "variations", "--model", "{missing}", "--encoder", "{missing}", "--data", "{missing}"],
], ids=lambda argv: " ".join(a for a in argv[:2] if not a.startswith("-")))
def test_a_missing_file_is_exit_status_2_with_one_line(argv, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "no-such-file", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err, "no-such-file")


def test_bad_arguments_are_exit_status_2_too():
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "pairs", "--max-steps", "many"])
    assert exit_info.value.code == 2


# --- through the real CLI on a tmpfs ------------------------------------------------------------------------------


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "training.cli", *map(str, args)], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        reason = (mounted.stderr or mounted.stdout).strip()
        print(f"skipped: mounting a {size} tmpfs needs root ({reason})")
        pytest.skip(f"cannot mount a tmpfs here ({reason}); run as root to test full disks and read-only folders")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave: int = 256 * 1024) -> None:
    """Fills the file system of `folder` up to `leave` bytes."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    import skimage.data

    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).resize((48, 32)).save(path)
    return path


@pytest.mark.slow  # trains (a few steps, in subprocesses): not in `make test-fast`
def test_a_read_only_folder_stops_each_writing_command(tmp_path, photo):
    from semantica_core.encoders import export_encoder

    encoder = tmp_path / "encoder.safetensors"
    export_encoder("resnet10t", encoder, random=True, image_size=64)
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        for args in (["init", "--encoder", encoder, "--preset", "tiny", "--output", ro / "model.safetensors"],
                     ["encoder", "export", "resnet10t", "--random", "--output", ro / "encoder.safetensors"],
                     ["train", "single", photo, "--output", ro / "model.safetensors", "--preset", "sindiffusion_tiny",
                      "--max-steps", "1", "--device", "cpu"],
                     ["train", "pairs", "--data", photo.parent, "--encoder", encoder, "--output", ro / "run"]):
            result = cli(*args)
            assert result.returncode == 2, (args, result.stderr[-2000:])
            _one_error_line(result.stderr, "Read-only file system", str(ro), "choose a folder you can write to")
        assert os.listdir(ro) == []


@pytest.mark.slow  # trains (a few steps, in subprocesses): not in `make test-fast`
def test_a_full_disk_during_train_single_keeps_the_last_save(tmp_path, photo):
    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.single_image_train import load_train_state, state_path_for

    with tmpfs(tmp_path / "disk", "24m") as disk:
        out = disk / "model.safetensors"
        common = ["--preset", "sindiffusion_tiny", "--size", "32", "--batch-size", "2", "--device", "cpu"]
        result = cli("train", "single", photo, "--output", out, "--max-steps", "2", *common)
        assert result.returncode == 0, result.stderr[-2000:]
        fill(disk)
        result = cli("train", "single", photo, "--output", out, "--max-steps", "4", "--resume", *common)
        assert result.returncode == 2, result.stderr[-2000:]
        line = _one_error_line(result.stderr, "No space left on device", str(disk), "free some space")
        print(line)
        assert sorted(os.listdir(disk)) == ["filler", "model.safetensors", "model.safetensors.train-state"]
        assert load_checkpoint(out).training_info["steps"] == 2
        assert load_train_state(state_path_for(out), "cpu").step == 2


@pytest.mark.slow  # trains (a few steps, in subprocesses): not in `make test-fast`
def test_a_full_disk_during_train_pairs_keeps_the_last_checkpoint(tmp_path):
    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.encoders import export_encoder
    from training import run_dir
    from training.data.example_pages import write_example_pages

    write_example_pages(str(tmp_path / "pages"), num_pages=6, size=64, with_bad_files=False)
    export_encoder("resnet10t", tmp_path / "encoder.safetensors", random=True, image_size=64)
    with tmpfs(tmp_path / "disk", "96m") as disk:
        out = disk / "run"
        args = ["train", "pairs", "--data", tmp_path / "pages", "--encoder", tmp_path / "encoder.safetensors",
                "--output", out, "--batch-size", "2", "--num-workers", "0", "--sample-every", "0",
                "--checkpoint-every", "2"]
        result = cli(*args, "--max-steps", "2")
        assert result.returncode == 0, result.stderr[-2000:]
        fill(disk, leave=4 * 2**20)  # room for a sample grid and logs, not for a checkpoint
        result = cli(*args, "--max-steps", "4", "--resume")
        assert result.returncode == 2, result.stderr[-2000:]
        line = _one_error_line(result.stderr, "No space left on device", "free some space")
        print(line)
        assert [step for step, _ in run_dir.checkpoint_dirs(str(out))] == [2]
        run_dir.check_checkpoint(str(out / "checkpoints" / "step-00000002"))
        assert not [n for n in os.listdir(out / "checkpoints") if n.startswith(".tmp")]
        assert load_checkpoint(out / "model.safetensors").training_info["steps"] == 2
        os.unlink(disk / "filler")  # space again: the run resumes from that checkpoint
        result = cli(*args, "--max-steps", "4", "--resume")
        assert result.returncode == 0 and "at step 2" in result.stdout, result.stderr[-2000:]


def test_train_single_resume_refuses_a_contradicting_flag_unless_override(tmp_path, photo, capsys):
    out = tmp_path / "model.safetensors"
    common = ["train", "single", str(photo), "--output", str(out), "--preset", "sindiffusion_tiny", "--size", "32",
              "--batch-size", "2", "--device", "cpu"]
    assert main(common + ["--max-steps", "1"]) == 0
    assert main(common + ["--max-steps", "2", "--resume", "--lr", "0.01"]) == 2
    _one_error_line(capsys.readouterr().err, "--lr 0.01 (stored: 0.002)", "--override")
    assert main(common + ["--max-steps", "2", "--resume", "--lr", "0.01", "--override"]) == 0
    assert "--override: continuing with --lr 0.01" in capsys.readouterr().err
