"""Where econlm reads and writes by default.

User state (converted models, indexes, caches) lives under one overridable home, like llm's
`LLM_USER_PATH`: `$ECONLM_HOME`, default `~/.cache/econlm`. The corpus defaults to `$ECONLM_DATA`.
"""

from __future__ import annotations

import os
from pathlib import Path

from econlm.errors import UserError

# The project never downloads from a model hub at run time; real users with hub access can
# unset this before running econlm.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]


def econlm_home() -> Path:
    """The user-state directory (created on demand)."""
    home = Path(os.environ.get("ECONLM_HOME") or Path.home() / ".cache" / "econlm")
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_corpus() -> Path:
    """The corpus directory from `$ECONLM_DATA`, or the shared checkout beside the repo."""
    env = os.environ.get("ECONLM_DATA")
    if env:
        return Path(env)
    beside = REPO_ROOT.parent / "shared" / "data" / "arxiv-econ"
    if beside.is_dir():
        return beside
    raise UserError("no corpus given: pass --corpus DIR or set ECONLM_DATA")


def shipped_models_dir() -> Path:
    """Adapters committed with the project (`models/` at the repo root)."""
    return REPO_ROOT / "models"
