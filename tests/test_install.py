"""A lean install for artists: requirements.txt (what ComfyUI-Manager installs) pulls no training-only package, and
what the nodes import at run time is in it."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINING_ONLY = {"accelerate", "tensorboard", "diffusers", "tqdm", "yaml", "pyyaml", "mlxtend", "scikit-image",
                 "playwright", "pytest"}
# import name -> distribution in requirements.txt (torch and torchvision are ComfyUI's own)
RUNTIME = {"safetensors": "safetensors", "open_clip": "open_clip_torch", "timm": "timm", "kornia": "kornia",
           "numpy": "numpy", "PIL": "pillow", "torch": None, "torchvision": None}


def _optional_imports(tree: ast.AST) -> set[int]:
    """ids of the import statements inside a `try:` that handles ImportError (a package the code can do without)."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return optional


def _imports(folder: Path) -> dict[str, set[str]]:
    """Top-level module names imported anywhere (module level or inside functions) in the .py files of `folder`,
    except optional imports (see _optional_imports)."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        optional = _optional_imports(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def _requirements() -> set[str]:
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            names.add(line.split(">")[0].split("=")[0].split("<")[0].strip().lower())
    return names


def test_nodes_and_core_import_no_training_package_and_only_what_requirements_list():
    requirements = _requirements()
    stdlib = set(sys.stdlib_module_names)
    own = {"semantica_core", "nodes", "comfy", "comfy_api", "folder_paths", "comfy_extras", "latent_preview",
           "node_helpers"}  # the pack's own modules and the host's
    for folder in ("nodes", "semantica_core"):
        for name, files in _imports(REPO_ROOT / folder).items():
            assert name not in TRAINING_ONLY and name != "training", f"{sorted(files)} import {name}"
            if name in stdlib or name in own or name == "__future__":
                continue
            assert name in RUNTIME, f"{sorted(files)} import {name}, which requirements.txt does not list"
            if RUNTIME[name] is not None:
                assert RUNTIME[name].lower() in requirements, f"requirements.txt lacks {RUNTIME[name]} ({name})"


def test_training_imports_only_the_core_and_itself():
    """What `pip install .` ships is semantica_core and training: training cannot lean on the checkout's tools/
    (the ComfyUI host), nodes/ or benchmarks/."""
    for name, files in _imports(REPO_ROOT / "training").items():
        assert name not in {"tools", "nodes", "benchmarks", "scripts"}, f"{sorted(files)} import {name}"


def test_no_sys_path_edits_outside_the_tests():
    """Modules are imported as installed or from the checkout's root (`python -m`); only ComfyUI's entry point, the
    root __init__.py, may put the pack folder on the path."""
    edits = []
    for top in REPO_ROOT.iterdir():
        if not top.is_dir() or top.name.startswith(".") or top.name in ("tests", "out"):
            continue
        for path in top.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                        and node.value.id == "sys"):
                    edits.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not edits, f"sys.path used in {edits}"


def test_requirements_resolve_without_training_packages(tmp_path):
    """What `pip install -r requirements.txt` would install into a clean venv that has torch (a dry run)."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run", "--ignore-installed",
         "--quiet", "--report", str(report), "-r", str(REPO_ROOT / "requirements.txt"), "torch", "torchvision"],
        capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and any(word in done.stderr for word in ("Could not fetch", "connection", "resolve")):
        pytest.skip(f"the package registry cannot be reached for the dry run: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    installed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"open_clip_torch", "timm", "safetensors", "kornia"} <= installed
    pulled = installed & (TRAINING_ONLY - {"tqdm", "pyyaml"})  # tqdm and PyYAML come with open_clip and timm
    assert not pulled, f"requirements.txt pulls training-only packages: {sorted(pulled)}"


@pytest.mark.host
def test_a_missing_optional_package_disables_only_the_nodes_that_need_it(tmp_path, monkeypatch):
    """A ComfyUI whose Python lacks open_clip: the pack loads, the variation template runs (its encoder is timm's),
    and the text-guided node says which package to install; the server keeps serving."""
    from tools.hostctl import ComfyServer, pack_node_ids, ui_to_api

    shim = tmp_path / "shim" / "open_clip"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'open_clip'\", name='open_clip')\n")
    monkeypatch.setenv("PYTHONPATH", str(shim.parent))
    with ComfyServer(tmp_path / "base", log_path=tmp_path / "comfyui.log", cpu=True) as server:
        server.check_nodes(pack_node_ids())
        client = server.client()
        info = client.object_info()
        workflow = json.loads((REPO_ROOT / "workflows" / "semantica_image_variations.json").read_text())
        api = ui_to_api(workflow, info)
        for node in api.values():
            if node["class_type"] == "SemanticaVariationSampler":
                node["inputs"].update(steps=2, count=1)
        assert client.run(api, timeout=600)["status"]["status_str"] == "success"
        clip_dir = tmp_path / "base" / "models" / "open_clip"
        clip_dir.mkdir(parents=True, exist_ok=True)
        (clip_dir / "clip.safetensors").write_bytes(b"")  # never read: the import fails first
        prompt = {
            "1": {"class_type": "SemanticaUNetLoader",
                  "inputs": {"model_name": "sindiffusion-rocket.safetensors", "weights": "ema"}},
            "2": {"class_type": "SinDiffusionTextGuided",
                  "inputs": {"model": ["1", 0], "clip_name": "clip.safetensors", "clip_arch": "ViT-B-32",
                             "prompt": "a red sky", "scale": 0.05, "width": 0, "height": 0, "seed": 0, "count": 1,
                             "steps": 2, "sampler": "ddpm"}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        }
        history = client.run(prompt, timeout=300, check=False)
        message = next(m for kind, m in history["status"]["messages"] if kind == "execution_error")
        assert "open_clip_torch" in message["exception_message"] and "requirements.txt" in message["exception_message"]
        assert client.run(api, timeout=600)["status"]["status_str"] == "success"


def _install_copy(tmp_path: Path) -> Path:
    """`pip install .` (not editable) of a copy of the package sources into a fresh venv; returns the venv.

    The venv has no packages of its own: a .pth line lends it this interpreter's site-packages (torch and the rest,
    pip and setuptools for the build), whose own .pth files, the editable install of the checkout among them, are
    not processed. The sources are copied so the build writes nothing into the checkout."""
    import shutil
    import site
    import sysconfig

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    for package in ("semantica_core", "training"):
        shutil.copytree(REPO_ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "host_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "--no-deps",
         "--no-build-isolation", "--no-index", "--quiet", str(src)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return venv


def _command_paths(parser) -> list[list[str]]:
    """Every sub-command of an argparse parser, as the words that name it (["train", "pairs"], ...)."""
    import argparse

    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append([name])
                paths += [[name, *rest] for rest in _command_paths(sub)]
    return paths


HELP_EACH = """
import json, sys
from training.cli import main
for words in json.loads(sys.argv[1]):
    try:
        main([*words, "--help"])
    except SystemExit as done:
        assert done.code == 0, (words, done.code)
    else:
        raise AssertionError(f"{words} --help did not exit")
"""


@pytest.mark.slow
def test_installed_package_runs_every_command_and_trains_outside_the_checkout(tmp_path):
    from training.cli import build_parser
    from training.data.example_pages import write_example_pages

    venv = _install_copy(tmp_path)
    work = tmp_path / "work"  # outside the checkout: nothing there can be imported by accident
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")

    def run(*args, timeout=300):
        done = subprocess.run([*map(str, args)], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    where = run(venv / "bin" / "python", "-c", "import training, semantica_core; print(training.__file__); "
                "print(semantica_core.__file__)").split()
    assert all(Path(path).is_relative_to(venv) for path in where), where
    semantica = venv / "bin" / "semantica"
    assert "usage: semantica" in run(semantica, "--help")
    commands = _command_paths(build_parser())
    assert ["train", "pairs"] in commands and ["bench"] in commands
    # Every sub-command's --help in one process of the installed package (one torch import, not one per command).
    helps = run(venv / "bin" / "python", "-c", HELP_EACH, json.dumps(commands), timeout=600)
    assert helps.count("usage: semantica ") == len(commands), helps[-3000:]

    write_example_pages(str(work / "pages"), num_pages=4, size=64)
    run(semantica, "encoder", "export", "resnet10t", "--random", "--image-size", "64", "--output", "encoder.safetensors")
    run(semantica, "train", "pairs", "--preset", "tiny", "--data", "pages", "--encoder", "encoder.safetensors",
        "--output", "run", "--max-steps", "4", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
        "--set", "sample.every=0", "--set", "sample.num_conditions=0", "--set", "train.checkpoint_every=4",
        timeout=600)
    from semantica_core.checkpoint import load_checkpoint

    model = load_checkpoint(work / "run" / "model.safetensors")
    assert model.kind == "pair_conditioned" and model.training_info["steps"] == 4
