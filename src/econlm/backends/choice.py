"""The model that answers when none is named, one setting for the app's pages and for the
assistant behind `econlm ask` and the Papers / My documents pages (so econlm.rag does not depend
on the app).

ECONLM_BACKEND   the model spec, ENGINE:MODEL (`econlm app --model SPEC`, see `econlm.backends`; parsed
                 where the backend is built); default: the shipped econlm adapter
                 ("transformers:econlm"), or the base model when the adapter is not present. As the
                 answer model, on `econlm bench rag-quality` (docs/assistant.md) the adapter answers as
                 well as the packaged Qwen2.5-Coder 0.5B / 1.5B once answers are checked against the
                 passages, and is the fastest of them on this CPU (time to first token 7.3 s, answer
                 10.4 s median, with the machine loaded)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from econlm.models import DEFAULT_MODEL, SHIPPED_ADAPTER_DIR, SHIPPED_ADAPTER_NAME


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
