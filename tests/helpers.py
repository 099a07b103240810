"""What several test modules share. pytest puts this folder on sys.path first: `from helpers import ...`."""
import json
import os
import time
from pathlib import Path
from typing import Optional

import torch


REPO = Path(__file__).resolve().parents[1]


def cli_env() -> dict:
    """The environment of a `semantica` subprocess: one thread (the machine is shared), offline, unbuffered, and the
    checkout first on the path."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def randomize_zero_init(network: torch.nn.Module, std: float = 0.05,
                        generator: Optional[torch.Generator] = None) -> torch.nn.Module:
    """An untrained network starts with zero output layers and so ignores its input: random ones make tests bite."""
    with torch.no_grad():
        for p in network.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)
    return network


def interrupt_during_sampling(comfy, prompt: dict, steps_before: int, timeout: float) -> tuple[float, dict, str]:
    """Queues `prompt` on the server, waits for `steps_before` of its progress messages, presses Cancel, and returns
    (seconds from Cancel to ComfyUI's execution_interrupted, that message, the prompt id). Fails when the prompt
    finishes or fails instead."""
    import websocket

    host = comfy.url.split("://", 1)[1]
    ws = websocket.create_connection(f"ws://{host}/ws?clientId={comfy.client_id}", timeout=timeout)
    try:
        prompt_id = comfy.queue_prompt(prompt)
        steps_seen = 0
        while steps_seen < steps_before:  # sampling is under way
            message = _next_text(ws)
            assert message["type"] not in ("execution_success", "execution_error"), message
            if message["type"] == "progress" and (message.get("data") or {}).get("prompt_id") == prompt_id:
                steps_seen += 1
        started = time.monotonic()
        comfy.interrupt()
        while True:
            message = _next_text(ws)
            if (message.get("data") or {}).get("prompt_id") != prompt_id:
                continue
            assert message["type"] != "execution_success", "the sampling was not interrupted"
            if message["type"] == "execution_interrupted":
                return time.monotonic() - started, message, prompt_id
    finally:
        ws.close()


def _next_text(ws) -> dict:
    """The next JSON message of the socket; binary ones (previews) are skipped."""
    while True:
        message = ws.recv()
        if not isinstance(message, bytes):
            return json.loads(message)
