"""`econlm merge`: fold a run's LoRA adapter into its base model and save a plain HF model folder.

The base is loaded in fp32 (also for QLoRA runs: merging into 4-bit weights would round the
adapter away), so the merged model matches base + adapter up to float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

from econlm.errors import UserError
from econlm.io import atomic_dir, atomic_write_json
from econlm.models import ModelRef, load_model


def merge_run(adapter: ModelRef, out_dir: str | Path) -> Path:
    """Write OUT_DIR (safetensors + tokenizer + provenance) from ADAPTER (a run or adapter dir), atomically."""
    if adapter.kind != "adapter":
        raise UserError(f"{adapter}: not a LoRA adapter or training run directory (no adapter_config.json)")
    model, tokenizer = load_model(adapter, dtype="float32", device="cpu", merge_adapter=True)
    run_file = adapter.path / "econlm_run.json"
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "econlm_merged.json", {
            "adapter": adapter.source,
            "adapter_hash": adapter.hash,
            "base_model": adapter.base.text,
            "base": adapter.base.describe(),
            "run": json.loads(run_file.read_text()) if run_file.is_file() else None,
        })
    return Path(out_dir)
