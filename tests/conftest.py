"""Shared fixtures. Host tests (marked `host`) run against one real ComfyUI server per session."""
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `tools` and `nodes` are not installed packages
    sys.path.insert(0, str(REPO_ROOT))

from tools.hostctl import ComfyServer, default_comfy_dir, pack_node_ids  # noqa: E402

_server: ComfyServer | None = None  # for failure reports and the summary


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A ComfyUI server with the pack linked into its own base directory; stopped at the end of the session."""
    global _server
    base = tmp_path_factory.mktemp("comfy-base")
    server = ComfyServer(base, comfy_dir=default_comfy_dir(), log_path=base / "comfyui.log", cpu=True)
    _server = server
    try:
        server.start(timeout=120)
        server.check_nodes(pack_node_ids())
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfy(comfy_server):
    """A client of the session's server (queue prompts, wait, read images, upload)."""
    return comfy_server.client()


@pytest.fixture(scope="session")
def comfy_models_dir(comfy_server) -> Path:
    """The server's models folder: tests drop model files into models/semantica/... here."""
    return comfy_server.models_dir


def pytest_collection_modifyitems(config, items):
    """A test on the session's server that is not marked `host` would run in `make test-fast`: refuse the run."""
    unmarked = [item.nodeid for item in items
                if "comfy_server" in getattr(item, "fixturenames", ()) and item.get_closest_marker("host") is None]
    if unmarked:
        raise pytest.UsageError(f"mark these tests `host` (they use the ComfyUI server): {', '.join(unmarked)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _server is not None and "comfy_server" in getattr(item, "fixturenames", ()):
        report.sections.append(("ComfyUI server log (last 60 lines)", _server.log_tail(60)))


def pytest_terminal_summary(terminalreporter):
    if _server is not None and _server.start_seconds is not None:
        terminalreporter.write_line(f"ComfyUI host: ready in {_server.start_seconds:.1f} s, log {_server.log_path}")
