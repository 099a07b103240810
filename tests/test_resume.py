"""Resuming both trainers through the real CLI (subprocesses), without pickles and without surprises: a run
SIGKILLed after a checkpoint and resumed ends with the weights of an uninterrupted run (`semantica train pairs` and
`semantica train single`, one helper); for pairs also: the stored config wins over contradicting flags, a kill during
a checkpoint write and a corrupt latest checkpoint fall back to the last complete one, a second run into a running
folder stops, and the checkpoints of older versions are refused with a message."""
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from training import run_dir

from helpers import cli_env

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 16, 4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    import skimage.data

    from semantica_core.encoders import export_encoder
    from training.data.example_pages import write_example_pages

    root = tmp_path_factory.mktemp("resume")
    write_example_pages(str(root / "pages"), num_pages=8, size=64, with_bad_files=False)
    export_encoder("resnet10t", str(root / "encoder.safetensors"), random=True, image_size=64)
    Image.fromarray(skimage.data.chelsea()).resize((48, 32)).save(root / "photo.png")
    return root


def command(assets, out, *extra):
    """`semantica train pairs` on the example pages; float32 so that equal steps give equal weights."""
    return [sys.executable, "-m", "training.cli", "train", "pairs", "--data", str(assets / "pages"), "--encoder",
            str(assets / "encoder.safetensors"), "--output", str(out), "--preset", "tiny", "--batch-size", "4",
            "--num-workers", "0", "--sample-every", "0", "--precision", "fp32", *extra]


def single_command(assets, out, *extra):
    """`semantica train single` on a small photo, float32 on the CPU."""
    return [sys.executable, "-m", "training.cli", "train", "single", str(assets / "photo.png"), "--output", str(out),
            "--preset", "sindiffusion_tiny", "--size", "16", "--batch-size", "2", "--device", "cpu", "--precision",
            "fp32", *extra]


def run(args, expect=0, timeout=300):
    result = subprocess.run(args, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout,
                            preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def files_under(folder: Path):
    return [p for p in folder.rglob("*") if p.is_file()]


def kill_after_a_checkpoint(args, saved, timeout=240) -> None:
    """Starts `args` and SIGKILLs it as soon as `saved()` says a checkpoint is on disk (and before it ends)."""
    process = subprocess.Popen(args, cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not saved():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, f"no checkpoint within {timeout} s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"


def assert_same_weights(a: Path, b: Path) -> None:
    """Both runs took the same float32 steps on the same CPU in the same order: the weights are equal bit for bit."""
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    different = [k for k in x if not (x[k] == y[k]).all()]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"


@pytest.fixture(scope="module")
def straight(assets):
    """An uninterrupted run of STEPS steps, checkpoints every EVERY steps."""
    out = assets / "straight"
    run(command(assets, out, "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY)))
    return out


def test_state_is_safetensors_and_files_follow_the_umask(straight):
    written = files_under(straight)
    assert not [p for p in written if p.suffix in (".pkl", ".bin", ".pt")], "a pickle was written"
    state = straight / "checkpoints" / f"step-{STEPS:08d}"
    assert {p.name for p in state.iterdir()} == {"state.safetensors"}
    modes = {str(p.relative_to(straight)): stat.S_IMODE(p.stat().st_mode) for p in written
             if "tensorboard" not in p.parts}
    assert set(modes.values()) == {0o644}, modes  # readable by a ComfyUI that runs as another user


@pytest.mark.slow
def test_train_pairs_sigkilled_then_resumed_ends_with_the_uninterrupted_weights(assets, straight):
    out = assets / "killed"
    args = command(assets, out, "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY))
    kill_after_a_checkpoint(args, lambda: bool(run_dir.checkpoint_dirs(str(out))))
    last = run_dir.checkpoint_dirs(str(out))[-1][0]
    assert 0 < last < STEPS and not (out / "model.safetensors").exists()
    result = run(args + ["--resume"])
    assert f"at step {last}" in result.stdout
    assert not [p for p in files_under(out) if p.suffix in (".pkl", ".bin")]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert_same_weights(out / "model.safetensors", straight / "model.safetensors")
    summary, uninterrupted = (json.loads((o / "summary.json").read_text()) for o in (out, straight))
    assert summary["start_step"] == last and summary["data"] == uninterrupted["data"]  # no pair lost or repeated


@pytest.mark.slow
def test_train_single_sigkilled_then_resumed_ends_with_the_uninterrupted_weights(assets):
    from semantica_core.single_image_train import state_path_for

    steps = "300"  # long enough that the kill lands before the end
    straight, killed = assets / "single-straight.safetensors", assets / "single-killed.safetensors"
    run(single_command(assets, straight, "--max-steps", steps, "--save-every", "0"))
    args = single_command(assets, killed, "--max-steps", steps, "--save-every", "10")
    kill_after_a_checkpoint(args, state_path_for(killed).is_file)
    result = run(args + ["--resume"])
    assert "resuming" in result.stdout
    assert_same_weights(killed, straight)


def test_a_contradicting_flag_stops_unless_override(assets):
    out = assets / "contradict"
    run(command(assets, out, "--max-steps", str(EVERY), "--checkpoint-every", str(EVERY)))
    result = run(command(assets, out, "--max-steps", str(STEPS), "--lr", "0.01", "--resume"), expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.lr: 0.01 (stored: 0.0005)" in lines[0] and "--override" in lines[0], lines
    assert "Traceback" not in result.stderr
    # The bare command resumes with the stored config; --override applies the flag.
    result = run(command(assets, out, "--max-steps", str(EVERY + 2), "--checkpoint-every", str(EVERY),
                         "--lr", "0.01", "--resume", "--override"))
    assert "--override: resuming with optim.lr: 0.01" in result.stdout
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 0.01


def test_a_corrupt_latest_checkpoint_is_skipped(assets):
    out = assets / "corrupt"
    run(command(assets, out, "--max-steps", str(2 * EVERY), "--checkpoint-every", str(EVERY)))
    latest = out / "checkpoints" / f"step-{2 * EVERY:08d}" / "state.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated, as a crash on another fs
    result = run(command(assets, out, "--max-steps", str(2 * EVERY + 2), "--checkpoint-every", str(EVERY),
                         "--resume"))
    assert f"skipping checkpoint {latest.parent}: incomplete or corrupt" in result.stdout
    assert "is truncated" in result.stdout and f"at step {EVERY}" in result.stdout


def test_a_checkpoint_of_an_older_version_is_refused_with_a_message(assets, tmp_path):
    old = tmp_path / "old-run" / "checkpoints" / "step-00000004"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text(json.dumps({"format": 2, "step": 4}))
    result = run(command(assets, tmp_path / "old-run", "--max-steps", "6", "--resume"), expect=2)
    assert "written by an older version" in result.stderr and "model.safetensors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _kill_during_a_checkpoint_write(assets, out) -> int:
    """Starts a run that checkpoints every step and SIGKILLs it while a checkpoint's temporary folder exists (the
    folder still there after the kill proves it); returns the step of the checkpoint that was being written."""
    process = subprocess.Popen(command(assets, out, "--max-steps", "200", "--checkpoint-every", "1"), cwd=REPO,
                               env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root, deadline = out / "checkpoints", time.monotonic() + 240
    try:
        while True:
            assert process.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, "no checkpoint write within 240 s"
            done = run_dir.checkpoint_dirs(str(out))
            temporary = [n for n in (os.listdir(root) if root.is_dir() else []) if n.startswith(".tmp-step-")]
            if done and temporary:
                os.kill(process.pid, signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(timeout=30)
    return int(temporary[0].rsplit("-", 1)[1]) if (root / temporary[0]).is_dir() else 0


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_then_resume(assets):
    """The resumed run continues from the last complete checkpoint and leaves no temporary folder."""
    for attempt in range(5):  # the kill can land just after the rename; then try again
        out = assets / f"killed-writing-{attempt}"
        writing = _kill_during_a_checkpoint_write(assets, out)
        if writing:
            break
    else:
        pytest.fail("5 kills in a row missed every checkpoint write")
    last = run_dir.checkpoint_dirs(str(out))[-1][0]
    assert last < writing
    result = run(command(assets, out, "--max-steps", str(last + 2), "--checkpoint-every", "1", "--resume"))
    assert f"at step {last}" in result.stdout
    assert not [n for n in os.listdir(out / "checkpoints") if n.startswith(".tmp-")]
    assert json.loads((out / "summary.json").read_text())["steps"] == last + 2


@pytest.mark.slow
def test_a_second_run_into_a_running_folder_stops_at_once(assets):
    out = assets / "locked"
    first = subprocess.Popen(command(assets, out, "--max-steps", "100000", "--checkpoint-every", "0"), cwd=REPO,
                             env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock, deadline = out / "train.lock", time.monotonic() + 120
        while not (lock.is_file() and lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.1)
        started = time.monotonic()
        result = run(command(assets, out, "--max-steps", "10"), expect=2, timeout=120)
        seconds = time.monotonic() - started
        assert f"pid {first.pid}" in result.stderr and "in use by another training run" in result.stderr
        assert "--output" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        print(f"second run refused after {seconds:.1f} s (imports included)")
        assert first.poll() is None, "the first run was disturbed"
    finally:
        first.kill()
        first.wait(timeout=30)
    # A killed run leaves no stale lock: the folder can be resumed at once.
    run(command(assets, out, "--max-steps", "2", "--checkpoint-every", "0"))
