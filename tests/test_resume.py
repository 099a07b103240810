"""`semantica train pairs --resume` without pickles and without surprises, through the real CLI (subprocesses):
the state is safetensors + JSON, the stored config wins over contradicting flags, a kill during a checkpoint write
and a corrupt latest checkpoint fall back to the last complete one, and a second run into a running folder stops."""
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from training import train_pairs

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 8, 4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from semantica_core.encoders import export_encoder
    from training.data.example_pages import write_example_pages

    root = tmp_path_factory.mktemp("resume")
    write_example_pages(str(root / "pages"), num_pages=8, size=64, with_bad_files=False)
    export_encoder("resnet10t", str(root / "encoder.safetensors"), random=True, image_size=64)
    return root


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def command(assets, out, *extra):
    return [sys.executable, "-m", "training.cli", "train", "pairs", "--data", str(assets / "pages"), "--encoder",
            str(assets / "encoder.safetensors"), "--output-dir", str(out), "--preset", "tiny", "--batch-size", "4",
            "--num-workers", "0", "--sample-every", "0", *extra]


def run(args, expect=0, timeout=300):
    result = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout,
                            preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def files_under(folder: Path):
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def straight(assets):
    """An uninterrupted run of STEPS steps, checkpoints every EVERY steps."""
    out = assets / "straight"
    run(command(assets, out, "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY)))
    return out


def test_state_is_safetensors_and_json_and_files_follow_the_umask(straight):
    written = files_under(straight)
    assert not [p for p in written if p.suffix in (".pkl", ".bin", ".pt")], "a pickle was written"
    state = straight / "checkpoints" / f"step-{STEPS:08d}"
    assert {p.name for p in state.iterdir()} == {
        "model.safetensors", "optimizer.safetensors", "ema-0.safetensors", "rng-0.safetensors", "data-0.json",
        "config.json", "trainer_state.json"}
    modes = {str(p.relative_to(straight)): stat.S_IMODE(p.stat().st_mode) for p in written
             if "tensorboard" not in p.parts}
    assert set(modes.values()) == {0o644}, modes  # readable by a ComfyUI that runs as another user


@pytest.mark.slow
def test_resume_without_pickles_gives_the_uninterrupted_weights(assets, straight):
    out = assets / "split"
    run(command(assets, out, "--max-steps", str(EVERY), "--checkpoint-every", str(EVERY)))
    result = run(command(assets, out, "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY), "--resume"))
    assert f"at step {EVERY}" in result.stdout
    assert not [p for p in files_under(out) if p.suffix in (".pkl", ".bin")]
    a, b = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "resumed weights differ"


def test_a_contradicting_flag_stops_unless_override(assets, straight):
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


def test_a_corrupt_latest_checkpoint_is_skipped(assets, straight):
    out = assets / "corrupt"
    run(command(assets, out, "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY)))
    latest = out / "checkpoints" / f"step-{STEPS:08d}" / "optimizer.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated, as a crash on another fs
    result = run(command(assets, out, "--max-steps", str(STEPS + 2), "--checkpoint-every", str(EVERY), "--resume"))
    assert f"skipping checkpoint {latest.parent}: incomplete or corrupt" in result.stdout
    assert "is truncated" in result.stdout and f"at step {EVERY}" in result.stdout


def _kill_during_a_checkpoint_write(assets, out) -> int:
    """Starts a run that checkpoints every step and SIGKILLs it while a checkpoint's temporary folder exists (the
    folder still there after the kill proves it); returns the step of the checkpoint that was being written."""
    process = subprocess.Popen(command(assets, out, "--max-steps", "200", "--checkpoint-every", "1"), cwd=REPO,
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root, deadline = out / "checkpoints", time.monotonic() + 240
    try:
        while True:
            assert process.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, "no checkpoint write within 240 s"
            done = train_pairs.checkpoint_dirs(str(out))
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
        out = assets / f"killed-{attempt}"
        writing = _kill_during_a_checkpoint_write(assets, out)
        if writing:
            break
    else:
        pytest.fail("5 kills in a row missed every checkpoint write")
    last = train_pairs.checkpoint_dirs(str(out))[-1][0]
    assert last < writing
    result = run(command(assets, out, "--max-steps", str(last + 2), "--checkpoint-every", "1", "--resume"))
    assert f"at step {last}" in result.stdout
    assert not [n for n in os.listdir(out / "checkpoints") if n.startswith(".tmp-")]
    assert json.loads((out / "summary.json").read_text())["steps"] == last + 2


@pytest.mark.slow
def test_a_second_run_into_a_running_folder_stops_at_once(assets):
    out = assets / "locked"
    first = subprocess.Popen(command(assets, out, "--max-steps", "100000", "--checkpoint-every", "0"), cwd=REPO,
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock, deadline = out / "train.lock", time.monotonic() + 120
        while not (lock.is_file() and lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.1)
        started = time.monotonic()
        result = run(command(assets, out, "--max-steps", "10"), expect=2, timeout=120)
        seconds = time.monotonic() - started
        assert f"pid {first.pid}" in result.stderr and "in use by another training run" in result.stderr
        assert "--output-dir" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        print(f"second run refused after {seconds:.1f} s (imports included)")
        assert first.poll() is None, "the first run was disturbed"
    finally:
        first.kill()
        first.wait(timeout=30)
    # A killed run leaves no stale lock: the folder can be resumed at once.
    run(command(assets, out, "--max-steps", "2", "--checkpoint-every", "0"))
