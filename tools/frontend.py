"""The real ComfyUI frontend in headless Chromium, driven as a user drives it: open a template from the Templates
browser, look for the missing-file dialogs, press Run, wait, read the images.

Used by the browser tests (tests/test_browser.py) and, run as a script, to make each template's thumbnail
(`workflows/<name>.jpg`, shown by the Templates browser) and the README's screenshot from a real run:

  python -m tools.frontend --thumbnails --screenshots out/browser

The server is tools.hostctl.ComfyServer; the browser is Debian's `chromium` (Playwright's own browser download is
not reachable here), driven by Playwright from PyPI.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "semantica"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def find_chromium() -> str | None:
    return next((path for path in CHROMIUM_CANDIDATES if Path(path).is_file()), None)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (`pip install playwright`, part of the test extras)"
    if find_chromium() is None:
        return f"no Chromium at {', '.join(CHROMIUM_CANDIDATES)} (`apt-get install chromium`; make setup does it as root)"
    return None


def install_pack_copy(custom_nodes: Path) -> Path:
    """The repository's files (tracked and new, not ignored) copied to custom_nodes/<pack>: what a user's clone
    holds, with no link back to this checkout and none of its ignored build outputs."""
    target = custom_nodes / PACK_NAME
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@dataclass
class TemplateRun:
    """What one template did in the page: the dialogs it raised, the prompt's status, its images per output node."""

    name: str
    dialogs: list[str] = field(default_factory=list)
    status: str = ""
    error: str = ""
    seconds: float = 0.0
    images: dict[str, list[np.ndarray]] = field(default_factory=dict)


class Frontend:
    """One headless Chromium page on a ComfyUI server's real frontend."""

    def __init__(self, url: str, viewport=(1600, 1000)):
        self.url = url.rstrip("/")
        self.viewport = viewport
        self.console_errors: list[str] = []

    def __enter__(self) -> "Frontend":
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=find_chromium(), args=["--no-sandbox"], headless=True)
        self.page = self._browser.new_page(viewport={"width": self.viewport[0], "height": self.viewport[1]})
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.goto(self.url)
        self.page.wait_for_function("window.app && window.app.graph", timeout=120_000)
        self._click_if_there(self.page.locator("button:near(:text('Introducing Nodes 2.0'))", has_text="×"))
        return self

    @staticmethod
    def _click_if_there(locator) -> None:
        if locator.count() and locator.first.is_visible():
            locator.first.click()

    def __exit__(self, *exc) -> None:
        self._browser.close()
        self._playwright.stop()

    def visible_dialogs(self) -> list[str]:
        return self.page.evaluate(
            "() => [...document.querySelectorAll('.p-dialog')].filter(d => d.offsetParent !== null)"
            ".map(d => d.innerText.trim())")

    def templates_listed(self) -> list[str]:
        return sorted(requests.get(self.url + "/api/workflow_templates", timeout=30).json().get(PACK_NAME, []))

    def open_template(self, name: str) -> list[str]:
        """Opens the pack's template `name` as a user does (sidebar Templates, the pack's entry, its card); returns
        the texts of the dialogs the page shows afterwards (missing models, missing nodes)."""
        page = self.page
        dialog = page.locator(".p-dialog", has_text="Templates")
        if not dialog.count() or not dialog.first.is_visible():
            page.get_by_role("button", name="Templates").first.click()
        dialog.first.wait_for(timeout=30_000)
        dialog.first.get_by_text(PACK_NAME, exact=True).first.click()
        card = page.locator(f'[data-testid="template-workflow-{name}"]')
        card.wait_for(timeout=30_000)
        card.click()
        dialog.first.wait_for(state="hidden", timeout=30_000)
        page.wait_for_function(
            "(name) => window.app.graph._nodes.length > 0 && "
            "document.body.innerText.includes(name)", arg=name, timeout=30_000)
        time.sleep(1.0)  # a missing-models dialog opens right after the graph loads
        return self.visible_dialogs()

    def _history(self) -> dict:
        return requests.get(self.url + "/history", timeout=30).json()

    def press_run(self, timeout: float = 600) -> tuple[str, dict]:
        """Clicks the Run button (the frontend converts the graph itself) and waits for the prompt to finish;
        returns (prompt id, its /history entry)."""
        before = set(self._history())
        self.page.get_by_role("button", name="Run", exact=True).first.click()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = {k: v for k, v in self._history().items() if k not in before}
            for prompt_id, entry in new.items():
                if entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error":
                    return prompt_id, entry
            time.sleep(0.5)
        raise TimeoutError(f"the prompt queued by the Run button did not finish in {timeout:.0f} s")

    def images(self, entry: dict) -> dict[str, list[np.ndarray]]:
        out = {}
        for node_id, output in entry.get("outputs", {}).items():
            for image in output.get("images", []):
                params = {k: image[k] for k in ("filename", "subfolder", "type")}
                data = requests.get(self.url + "/view", params=params, timeout=60).content
                out.setdefault(node_id, []).append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        return out

    def run_template(self, name: str, timeout: float = 1700) -> TemplateRun:
        run = TemplateRun(name)
        run.dialogs = self.open_template(name)
        if run.dialogs:
            return run
        started = time.monotonic()
        _, entry = self.press_run(timeout)
        run.seconds = time.monotonic() - started
        run.status = entry["status"].get("status_str", "")
        for kind, message in entry["status"].get("messages", []):
            if kind == "execution_error":
                run.error = f"{message.get('node_type')}: {message.get('exception_message')}"
        run.images = self.images(entry)
        self.page.wait_for_timeout(500)  # the canvas draws the output previews
        return run

    def screenshot(self, path: Path) -> Path:
        """The page with the whole graph in view (the canvas's Fit View)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._click_if_there(self.page.get_by_role("button", name="Fit View"))
        self.page.wait_for_timeout(300)
        self.page.screenshot(path=str(path))
        return path


def thumbnail(images: list[np.ndarray], size: int = 256) -> Image.Image:
    """The first images of a run tiled into a square, nearest-enlarged so that 32 px digits stay crisp."""
    tiles = images[:4]
    columns = 1 if len(tiles) == 1 else 2
    rows = (len(tiles) + columns - 1) // columns
    cell = size // columns
    sheet = Image.new("RGB", (size, size), (24, 24, 24))
    for i, image in enumerate(tiles):
        tile = Image.fromarray(image)
        scale = cell / max(tile.size)
        resample = Image.NEAREST if scale >= 2 else Image.LANCZOS
        tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))), resample)
        x = (i % columns) * cell + (cell - tile.width) // 2
        y = (i // columns) * cell + (cell - tile.height) // 2 + (size - rows * cell) // 2
        sheet.paste(tile, (x, y))
    return sheet


def main(argv=None) -> int:
    from tools.hostctl import ComfyServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thumbnails", action="store_true", help="write workflows/<name>.jpg from each run")
    parser.add_argument("--screenshots", default="out/browser", help="folder for the page's screenshots")
    parser.add_argument("--only", nargs="*", help="template names (default: all the pack serves)")
    args = parser.parse_args(argv)
    why = browser_missing()
    if why:
        print(f"frontend: {why}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="semantica-frontend-"))
    pack = install_pack_copy(base / "custom_nodes")
    shots = Path(args.screenshots)
    failed = 0
    with ComfyServer(base, pack_dir=pack, log_path=shots / "comfyui.log", cpu=True) as server, \
            Frontend(server.url) as frontend:
        for name in args.only or frontend.templates_listed():
            run = frontend.run_template(name)
            frontend.screenshot(shots / f"{name}.png")
            outputs = [im for images in run.images.values() for im in images]
            ok = not run.dialogs and run.status == "success" and outputs
            failed += not ok
            print(f"{name}: {run.status or 'not run'} in {run.seconds:.1f} s, {len(outputs)} images"
                  + (f", dialogs {run.dialogs}" if run.dialogs else "") + (f", {run.error}" if run.error else ""))
            if ok and args.thumbnails:
                save_id = max(run.images, key=lambda k: (len(run.images[k]), int(k)))  # most images, then the last node
                thumbnail(run.images[save_id]).save(REPO_ROOT / "workflows" / f"{name}.jpg", quality=90)
    shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
