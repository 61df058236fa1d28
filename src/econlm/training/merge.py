"""`econlm merge`: fold a run's LoRA adapter into its base model and save a plain HF model folder.

The base is loaded in fp32 (also for QLoRA runs: merging into 4-bit weights would round the
adapter away), so the merged model matches base + adapter up to float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

from econlm.io import atomic_dir, atomic_write_json


def merge_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write OUT_DIR (safetensors + tokenizer + provenance) from the adapter in RUN_DIR, atomically."""
    from econlm.models import adapter_base, load_model, model_hash, resolve

    run_dir = Path(run_dir)
    source = resolve(run_dir).source  # a UserError unless run_dir holds an adapter
    model, tokenizer = load_model(run_dir, dtype="float32", device="cpu", merge_adapter=True)
    run_file = run_dir / "econlm_run.json"
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "econlm_merged.json", {
            "adapter": str(Path(source).resolve()),
            "adapter_hash": model_hash(source),
            "base_model": adapter_base(source),
            "run": json.loads(run_file.read_text()) if run_file.is_file() else None,
        })
    return Path(out_dir)
