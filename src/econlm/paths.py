"""Where econlm reads and writes by default.

User state (converted models, indexes, caches) lives under one overridable home, like llm's
`LLM_USER_PATH`: `$ECONLM_HOME`, default `~/.cache/econlm`. The corpus defaults to `$ECONLM_DATA`.
What ships with econlm (presets, the Q&A set, the shipped adapters) is package data, found through
`importlib.resources` so an installed wheel finds it wherever it lives; nothing is looked up from
the repository root (a wheel has none).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from econlm.errors import UserError

# The project never downloads from a model hub at run time; real users with hub access can
# unset this before running econlm.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def package_data(relative: str) -> Path:
    """A file or folder shipped inside the econlm package, e.g. `presets` or `datasets/qa/econ-qa.jsonl`.

    pip installs wheels unpacked, so the resource is a real path that any library can open."""
    return Path(str(files("econlm").joinpath(relative)))


def econlm_home() -> Path:
    """The user-state directory (created on demand)."""
    home = Path(os.environ.get("ECONLM_HOME") or Path.home() / ".cache" / "econlm")
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_corpus() -> Path:
    """The corpus directory from `$ECONLM_DATA`; there is no fallback, since an installed econlm has no
    checkout to look beside (the Makefile points `$ECONLM_DATA` at ../shared/data/arxiv-econ)."""
    env = os.environ.get("ECONLM_DATA")
    if env:
        return Path(env)
    raise UserError("no corpus given: pass --corpus DIR or set ECONLM_DATA")


def shipped_models_dir() -> Path:
    """Adapters that ship with econlm, one folder each (`models/` in a checkout links here)."""
    return package_data("adapters")
