"""scripts/carry_run.py: a run saved into carry/ and restored is the run, byte for byte, minus the
optimizer state and the older checkpoints, with no tracked file over the part size."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "carry_run.py"


@pytest.fixture(scope="module")
def carry_run():
    spec = importlib.util.spec_from_file_location("carry_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_saved_run_restores_byte_for_byte_without_optimizer_state(carry_run, tmp_path):
    run = tmp_path / "run"
    for step in (50, 100):
        checkpoint = run / "checkpoints" / f"step-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "adapter_model.safetensors").write_bytes(bytes(range(256)) * (10 + step))
        (checkpoint / "optimizer.pt").write_bytes(b"moments")
        (checkpoint / "trainer_state.json").write_text(f'{{"step": {step}}}')
    (run / "adapter_model.safetensors").write_bytes(b"best" * 1000)
    (run / "econlm_run.json").write_text("{}")
    carry = tmp_path / "carry"
    carry.mkdir()

    saved = carry_run.save(run, "qwen05", part_bytes=1024, root=carry)
    assert max(p.stat().st_size for p in saved.rglob("*") if p.is_file()) <= 1024
    assert not (saved / "checkpoints" / "step-50").exists()

    restored = carry_run.restore("qwen05", tmp_path / "runs" / "run", root=carry)
    expected = {p.relative_to(run): p.read_bytes() for p in run.rglob("*")
                if p.is_file() and "step-50" not in p.parts and p.name != "optimizer.pt"}
    assert {p.relative_to(restored): p.read_bytes() for p in restored.rglob("*") if p.is_file()} == expected
    assert [p.name for p in carry.iterdir()] == ["qwen05"]  # no staging folder left behind


def test_restoring_over_an_existing_run_is_refused(carry_run, tmp_path):
    (tmp_path / "carry" / "qwen05").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit, match="already exists"):
        carry_run.restore("qwen05", tmp_path / "run", root=tmp_path / "carry")
