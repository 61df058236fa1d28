"""The stages' layering: library stages never import what is built on them, the benchmarks and the
app, so each can be used (and installed) without those."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import econlm

SRC = Path(econlm.__file__).resolve().parent


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every module a file imports, `from M import N` counted as M and M.N."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, node.module or "")] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


@pytest.mark.parametrize("layer, users", [
    ("bench", ("bench", "cli")),  # provenance, results: the core never reaches into the benchmarks
    ("app", ("app", "cli")),  # the model setting the assistant shares with the app is econlm.backends.choice
])
def test_only_the_cli_and_the_layer_itself_import_it(layer, users):
    package = f"econlm.{layer}"
    offenders = [f"{path.relative_to(SRC)}:{line}" for path in SRC.rglob("*.py") if path.relative_to(SRC).parts[0] not in users
                 for line, name in imports(path) if name == package or name.startswith(f"{package}.")]
    assert not offenders
