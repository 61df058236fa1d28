"""App settings from the environment (set by `econlm app` from its options).

ECONLM_BACKEND   the model spec of every page: `econlm.backends.choice` (shared with econlm.rag)
ECONLM_TOP_K     passages retrieved per answer (default 5)
"""

from __future__ import annotations

import os

from econlm.backends.choice import backend_choice  # noqa: F401  (the app's model setting)
from econlm.errors import UserError

DEFAULT_TOP_K = 5


def top_k() -> int:
    raw = os.environ.get("ECONLM_TOP_K", str(DEFAULT_TOP_K))
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"ECONLM_TOP_K={raw!r} is not a whole number") from None
    if not 1 <= value <= 50:
        raise UserError(f"ECONLM_TOP_K={value} is out of range (1-50)")
    return value
