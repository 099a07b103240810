"""A real ComfyUI host with the pack, run headless: start and stop the server, queue workflows, read results.

Used by the host tests (tests/conftest.py), `make comfyui` (tools/run_comfyui.py) and the demo. It never
imports ComfyUI: the server is a subprocess (`main.py` of the unpacked host, see scripts/setup.sh), driven over
HTTP and the websocket like the frontend does.
"""
from __future__ import annotations

import ctypes
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import requests
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "semantica"  # folder name of the pack under custom_nodes/


def semantica_home() -> Path:
    return Path(os.environ.get("SEMANTICA_HOME") or REPO_ROOT / ".semantica").resolve()


def default_comfy_dir() -> Path:
    return semantica_home() / "comfyui"


def pack_node_ids() -> list[str]:
    """NODE_IDS from nodes/__init__.py, read without importing ComfyUI (that module defers its imports)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_semantica_pack_nodes", REPO_ROOT / "nodes" / "__init__.py",
        submodule_search_locations=[str(REPO_ROOT / "nodes")],
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.NODE_IDS)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _new_session_dying_with_parent():
    """preexec_fn: own process group (stopped as a whole), and SIGTERM when the starting thread ends, even by SIGKILL.

    Start servers from the main thread: Linux sends the signal when the thread that started the process exits.
    """
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class ComfyServer:
    """One ComfyUI process with its own base directory (models, input, output, custom_nodes/<pack link>)."""

    def __init__(self, base_dir, comfy_dir=None, port: int | None = None, listen: str = "127.0.0.1",
                 pack_dir=REPO_ROOT, log_path=None, cpu: bool | None = None, extra_args=(), python=sys.executable):
        self.base_dir = Path(base_dir).resolve()
        self.comfy_dir = Path(comfy_dir or default_comfy_dir()).resolve()
        self.listen = listen
        self.port = port or free_port(listen)
        self.pack_dir = Path(pack_dir).resolve()
        self.log_path = Path(log_path) if log_path else None  # None: the server writes to this process's output
        self.cpu = cpu
        self.extra_args = list(extra_args)
        self.python = python
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self._log_file = None

    @property
    def url(self) -> str:
        return f"http://{self.listen}:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def client(self) -> "ComfyClient":
        return ComfyClient(self.url)

    def link_pack(self) -> Path:
        """custom_nodes/<pack> -> the repository root, replacing a link to another checkout. A pack_dir that is
        custom_nodes/<pack> itself (a clone, as users install it) is used as it is."""
        link = self.base_dir / "custom_nodes" / PACK_NAME
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink() and link.resolve() == self.pack_dir:
            return link
        if link.is_symlink():
            if link.resolve() == self.pack_dir:
                return link
            link.unlink()
        elif link.exists():
            raise RuntimeError(f"{link} exists and is not a link: move it away so that {self.pack_dir} can be linked")
        link.symlink_to(self.pack_dir, target_is_directory=True)
        return link

    def command(self) -> list[str]:
        cpu = self.cpu
        if cpu is None:
            import torch

            cpu = not torch.cuda.is_available()
        return [
            self.python, "main.py", "--listen", self.listen, "--port", str(self.port), "--disable-auto-launch",
            "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
            *(["--cpu"] if cpu else []), *self.extra_args,
        ]

    def start(self, timeout: float = 120) -> "ComfyServer":
        if not (self.comfy_dir / "main.py").is_file():
            raise RuntimeError(f"no ComfyUI host at {self.comfy_dir}: run `make setup` (or set SEMANTICA_HOME)")
        if _port_in_use(self.listen, self.port):
            raise RuntimeError(f"port {self.port} on {self.listen} is in use: stop what runs there or pick a port")
        self.link_pack()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        out = None
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = out = open(self.log_path, "ab")
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command(), cwd=self.comfy_dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT if out else None, preexec_fn=_new_session_dying_with_parent,
        )
        try:
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"ComfyUI exited with code {code} while starting.\n{self.log_report()}")
            try:
                if requests.get(self.url + "/system_stats", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ComfyUI did not answer at {self.url} in time.\n{self.log_report()}")
            time.sleep(0.2)

    def check_nodes(self, node_ids) -> dict:
        """/object_info must list every node id: a pack that fails to import does not stop the server."""
        info = requests.get(self.url + "/object_info", timeout=60).json()
        missing = [n for n in node_ids if n not in info]
        if missing:
            raise RuntimeError(f"ComfyUI at {self.url} does not list the pack's nodes {missing}.\n{self.log_report()}")
        return info

    def log_tail(self, lines: int = 200) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        with open(self.log_path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))

    def log_report(self, lines: int = 200) -> str:
        if not self.log_path:
            return "See the server's output above."
        return f"Last {lines} lines of {self.log_path}:\n{self.log_tail(lines)}"

    def stop(self, timeout: float = 15) -> int | None:
        """Ends the server's whole process group: SIGTERM, then SIGKILL after `timeout` seconds."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    code = process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:  # children the server may have left in its group
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return code

    def wait(self) -> int:
        return self.process.wait()

    def __enter__(self) -> "ComfyServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


class PromptError(RuntimeError):
    """POST /prompt answered 400: the prompt did not validate. `node_errors` maps node ids to their errors."""

    def __init__(self, error: dict, node_errors: dict):
        self.error, self.node_errors = error, node_errors
        super().__init__(f"prompt rejected: {json.dumps(error)}; node errors: {json.dumps(node_errors)}")


class ExecutionFailed(RuntimeError):
    """A queued prompt ended with execution_error or execution_interrupted."""

    def __init__(self, history: dict):
        self.history = history
        err = execution_error(history)
        detail = "interrupted"
        if err:
            detail = f"{err.get('node_type')} (node {err.get('node_id')}): {err.get('exception_message')}"
        super().__init__(f"prompt failed: {detail}")


TERMINAL_MESSAGES = ("execution_success", "execution_error", "execution_interrupted")


def execution_error(history: dict) -> dict | None:
    """The execution_error message of a /history entry (node_id, node_type, exception_message, traceback)."""
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def message_types(history: dict) -> list[str]:
    return [kind for kind, _ in history.get("status", {}).get("messages", [])]


class ComfyClient:
    """The frontend's side of the API, for scripts and tests."""

    def __init__(self, url: str, client_id: str | None = None):
        self.url = url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.http = requests.Session()
        self._object_info = None

    def object_info(self, refresh: bool = False) -> dict:
        if self._object_info is None or refresh:
            self._object_info = self._get("/object_info").json()
        return self._object_info

    def _get(self, path: str, **params) -> requests.Response:
        r = self.http.get(self.url + path, params=params, timeout=60)
        r.raise_for_status()
        return r

    def queue_prompt(self, prompt: dict, prompt_id: str | None = None, check: bool = True):
        """API-format prompt -> prompt id. A 400 raises PromptError, or with check=False returns the answer."""
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id or str(uuid.uuid4())}
        r = self.http.post(self.url + "/prompt", json=body, timeout=60)
        if r.status_code == 400:
            answer = r.json()
            if check:
                raise PromptError(answer.get("error", {}), answer.get("node_errors", {}))
            return answer
        r.raise_for_status()
        return r.json()["prompt_id"] if check else r.json()

    def history(self, prompt_id: str) -> dict | None:
        return self._get(f"/history/{prompt_id}").json().get(prompt_id)

    def wait_for(self, prompt_id: str, timeout: float = 300, poll: float = 0.1) -> dict:
        """Polls /history until the prompt has finished (success, error or interrupt); returns its entry."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") is not None:
                return entry
            if time.monotonic() > deadline:
                queue = self._get("/queue").json()
                running, pending = len(queue.get("queue_running", [])), len(queue.get("queue_pending", []))
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout} s ({running} running, {pending} pending)")
            time.sleep(poll)

    def run(self, prompt: dict, timeout: float = 300, check: bool = True) -> dict:
        """Queues a prompt and waits for it; with check, a failed run raises ExecutionFailed."""
        entry = self.wait_for(self.queue_prompt(prompt), timeout)
        if check and entry["status"]["status_str"] != "success":
            raise ExecutionFailed(entry)
        return entry

    def run_ws(self, prompt: dict, timeout: float = 300) -> tuple[dict, list[dict]]:
        """Runs a prompt while listening on /ws: returns (history entry, messages of this prompt in order).

        JSON messages are kept as sent ({"type", "data"}); binary ones (previews) as {"type": "binary",
        "event": int, "data": bytes}.
        """
        import websocket  # websocket-client

        host = self.url.split("://", 1)[1]
        ws = websocket.create_connection(f"ws://{host}/ws?clientId={self.client_id}", timeout=timeout)
        messages = []
        try:
            prompt_id = self.queue_prompt(prompt, prompt_id=str(uuid.uuid4()))
            deadline = time.monotonic() + timeout
            while True:
                ws.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    raise TimeoutError(f"prompt {prompt_id}: no end message on /ws after {timeout} s") from None
                if isinstance(raw, bytes):
                    messages.append({"type": "binary", "event": int.from_bytes(raw[:4], "big"), "data": raw[4:]})
                    continue
                message = json.loads(raw)
                data = message.get("data") or {}
                if data.get("prompt_id", prompt_id) != prompt_id:
                    continue
                messages.append(message)
                if message["type"] in TERMINAL_MESSAGES:
                    break
        finally:
            ws.close()
        return self.wait_for(prompt_id, timeout=30), messages

    def interrupt(self) -> None:
        self.http.post(self.url + "/interrupt", timeout=30).raise_for_status()

    def get_images(self, history: dict, node_id: str | None = None) -> list[np.ndarray]:
        """The images the output nodes of a finished prompt wrote, via /view, as uint8 arrays [H, W, C]."""
        images = []
        for nid, output in history.get("outputs", {}).items():
            if node_id is not None and str(node_id) != nid:
                continue
            for ref in output.get("images", []):
                query = {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                         "type": ref.get("type", "output")}
                data = self._get("/view?" + urlencode(query)).content
                images.append(np.array(Image.open(io.BytesIO(data))))
        return images

    def upload_image(self, image, name: str | None = None) -> str:
        """A file path, a uint8 array ([H, W] gray, [H, W, 3] RGB, [H, W, 4] RGBA) or a list of equal-sized arrays
        -> a name for LoadImage. A list becomes one multi-page TIFF, which LoadImage reads as a batch."""
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            data, name = path.read_bytes(), name or path.name
        else:
            first, *more = [Image.fromarray(np.asarray(a, dtype=np.uint8))
                            for a in (image if isinstance(image, list) else [image])]
            buf = io.BytesIO()
            if more:
                first.save(buf, format="TIFF", save_all=True, append_images=more, compression="tiff_deflate")
            else:
                first.save(buf, format="PNG")
            data, name = buf.getvalue(), name or f"upload_{uuid.uuid4().hex[:12]}{'.tiff' if more else '.png'}"
        r = self.http.post(self.url + "/upload/image", files={"image": (name, data)},
                           data={"overwrite": "true", "type": "input"}, timeout=60)
        r.raise_for_status()
        answer = r.json()
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]


# --- UI-format workflows (what users save and share) -> API-format prompts (what /prompt runs) ---

FRONTEND_ONLY_NODES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
MODE_MUTED, MODE_BYPASSED = 2, 4
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _widgets(info: dict) -> list[tuple[str, bool, bool]]:
    """(name, has a control_after_generate value, has an upload button value) per widget, in widget order."""
    widgets = []
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section, {})
        for name in info.get("input_order", {}).get(section, list(specs)):
            spec = specs[name]
            kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            if not (isinstance(kind, list) or (kind in WIDGET_TYPES and not opts.get("forceInput"))):
                continue
            control = bool(opts.get("control_after_generate")) or (kind == "INT" and name in ("seed", "noise_seed"))
            upload = any(v is True and k.endswith("_upload") for k, v in opts.items())
            widgets.append((name, control, upload))
    return widgets


def _widget_values(node: dict, info: dict) -> dict:
    values = node.get("widgets_values") or []
    widgets = _widgets(info)
    if isinstance(values, dict):  # some custom nodes save their widgets by name
        return {name: values[name] for name, _, _ in widgets if name in values}
    out, i = {}, 0
    for k, (name, control, upload) in enumerate(widgets):
        if i >= len(values):
            break
        # A list value would read as a link: the frontend wraps it, and the server unwraps it.
        out[name] = {"__value__": values[i]} if isinstance(values[i], list) else values[i]
        i += 1
        # Extra values the frontend stores after some widgets: the seed's "randomize", an upload button's label.
        if control and i < len(values) and values[i] in CONTROL_VALUES:
            i += 1
        elif upload and len(values) - i > len(widgets) - k - 1:
            i += 1
    return out


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """UI-format workflow (version 0.4, as saved by the frontend) -> API-format prompt, like graphToPrompt().

    Widget values are matched to names with `input_order` from /object_info. Muted nodes (mode 2) are left out
    and their outputs unconnected; bypassed nodes (mode 4) pass an input of the output's type through. Notes are
    dropped, Reroutes followed, and PrimitiveNodes replaced by their value. Subgraphs are not supported.
    """
    nodes = {n["id"]: n for n in workflow.get("nodes", [])}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            links[link[0]] = (link[1], link[2])

    def source(link_id, depth=0):
        """Follows a link to ("link", [id, slot]), ("value", v) or None (nothing is connected in effect)."""
        if link_id is None or link_id not in links or depth > 100:
            return None
        origin_id, slot = links[link_id]
        node = nodes.get(origin_id)
        if node is None:
            return None
        if node["type"] == "Reroute":
            inputs = node.get("inputs") or [{}]
            return source(inputs[0].get("link"), depth + 1)
        if node["type"] == "PrimitiveNode":
            values = node.get("widgets_values") or [None]
            return ("value", values[0])
        if node["type"] in FRONTEND_ONLY_NODES or node.get("mode", 0) == MODE_MUTED:
            return None
        if node.get("mode", 0) == MODE_BYPASSED:
            outputs = node.get("outputs") or []
            kind = outputs[slot].get("type") if slot < len(outputs) else None
            candidates = [(i, inp) for i, inp in enumerate(node.get("inputs") or [])
                          if inp.get("link") is not None and inp.get("type") in (kind, "*")]
            candidates.sort(key=lambda c: c[0] != slot)  # the input at the same index first
            return source(candidates[0][1]["link"], depth + 1) if candidates else None
        return ("link", [str(origin_id), slot])

    prompt = {}
    for node_id, node in nodes.items():
        kind = node["type"]
        if kind in FRONTEND_ONLY_NODES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        if kind not in object_info:
            raise ValueError(f"workflow node {node_id} has type '{kind}', which this ComfyUI does not know: "
                             f"install the custom node pack that provides it")
        info = object_info[kind]
        inputs = _widget_values(node, info)
        for inp in node.get("inputs") or []:
            name = (inp.get("widget") or {}).get("name", inp["name"])
            linked = source(inp.get("link"))
            if linked is not None:  # a connection replaces the widget's own value
                inputs[name] = linked[1]
        prompt[str(node_id)] = {
            "class_type": kind,
            "inputs": inputs,
            "_meta": {"title": node.get("title") or info.get("display_name") or kind},
        }
    return prompt
