"""App settings from the environment (set by `econlm app` from its options).

ECONLM_BACKEND   the model spec, ENGINE:MODEL (`econlm app --model SPEC`, see `econlm.backends`; parsed
                 where the backend is built); default: the shipped econlm adapter
                 ("transformers:econlm"), or the base model when the adapter is not present. It is
                 also the answer model of the Papers and My documents pages and of `econlm ask`:
                 on `econlm bench rag-quality` (docs/assistant.md) it answers as well as the packaged
                 Qwen2.5-Coder 0.5B / 1.5B once answers are checked against the passages, and is the
                 fastest of them on this CPU (time to first token 7.3 s, answer 10.4 s median, with
                 the machine loaded)
ECONLM_TOP_K     passages retrieved per answer (default 5)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from econlm.errors import UserError
from econlm.models import DEFAULT_MODEL, SHIPPED_ADAPTER_DIR, SHIPPED_ADAPTER_NAME

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class BackendChoice:
    spec: str
    note: str  # why this model, shown on every page


def backend_choice() -> BackendChoice:
    spec = os.environ.get("ECONLM_BACKEND", "").strip()
    if spec:
        return BackendChoice(spec, "set by econlm app --model (ECONLM_BACKEND)")
    if (SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file():
        return BackendChoice(f"transformers:{SHIPPED_ADAPTER_NAME}", "the shipped econlm fine-tune")
    return BackendChoice(
        f"transformers:{DEFAULT_MODEL}",
        "base model, not fine-tuned: the shipped econlm adapter is not present",
    )


def top_k() -> int:
    raw = os.environ.get("ECONLM_TOP_K", str(DEFAULT_TOP_K))
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"ECONLM_TOP_K={raw!r} is not a whole number") from None
    if not 1 <= value <= 50:
        raise UserError(f"ECONLM_TOP_K={value} is out of range (1-50)")
    return value
