"""The bad-input catalogue: every kind of mistake a user (or a hostile file) brings to the CLI.

Each case runs the real entry point in a subprocess and must give exit code 2, exactly one error
line that names the file, line or option at fault, no traceback, and leave every file under the
test's directory (corpus, configs, output directories, $ECONLM_HOME) as it was: nothing written,
nothing lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_rag_assistant import BAD_FILES

from conftest import run_cli


@dataclass(frozen=True)
class Case:
    id: str
    # (the test's directory, a small valid corpus there) -> (CLI arguments, text the error line must hold)
    make: Callable[[Path, Path], tuple[list[str], str]]
    slow: bool = False


def _lines(corpus: Path) -> list[str]:
    return (corpus / "test.jsonl").read_text(encoding="utf-8").splitlines()[:2]


def _with(corpus: Path, **changes) -> str:
    """The corpus's second paper with fields changed (None drops the field), as a JSON line."""
    record = json.loads(_lines(corpus)[1])
    for key, value in changes.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    return json.dumps(record, ensure_ascii=False)


def _validate(data: Callable[[Path], bytes], message: str, *flags: str) -> Callable:
    """`econlm data validate FILE` on a file whose bytes `data(corpus)` gives."""
    def make(tmp: Path, corpus: Path):
        path = tmp / "papers.jsonl"
        path.write_bytes(data(corpus))
        return ["data", "validate", *flags, str(path)], message.format(file=path)
    return make


def _second_line(line: Callable[[Path], str | bytes]) -> Callable[[Path], bytes]:
    def data(corpus: Path) -> bytes:
        second = line(corpus)
        return _lines(corpus)[0].encode() + b"\n" + (second if isinstance(second, bytes) else second.encode()) + b"\n"
    return data


def _good(corpus: Path) -> str:
    return "\n".join(_lines(corpus)) + "\n"


def _split_replaced(split: str, data: Callable[[Path], bytes], message: str, command: str = "data") -> Callable:
    """A copy of the corpus whose SPLIT file is `data(corpus)`, given to `econlm data build` or `index build`;
    the error line must hold `message` formatted with the copy (`{corpus}`) and the split file (`{file}`)."""
    def make(tmp: Path, corpus: Path):
        copy = tmp / "corpus"
        copy.mkdir()
        for name in ("train", "validation", "test"):
            (copy / f"{name}.jsonl").write_bytes((corpus / f"{name}.jsonl").read_bytes())
        (copy / f"{split}.jsonl").write_bytes(data(corpus))
        args = ["index", "build", "--splits", split] if command == "index" else ["data", "build"]
        return [*args, "--corpus", str(copy), "--out", str(tmp / "out")], message.format(corpus=copy, file=copy / f"{split}.jsonl")
    return make


def _build_into(prepare: Callable[[Path], Path], message: str, command: tuple[str, ...] = ("data", "build")) -> Callable:
    """`econlm data build` (or another command) with --out a path `prepare(tmp)` made."""
    def make(tmp: Path, corpus: Path):
        out = prepare(tmp)
        return [*command, "--corpus", str(corpus), "--out", str(out)], message.format(out=out)
    return make


def _foreign_dir(tmp: Path) -> Path:
    (tmp / "thesis").mkdir()
    (tmp / "thesis" / "thesis.tex").write_text("\\section{Introduction}")
    return tmp / "thesis"


def _a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("my notes")
    return tmp / "notes.txt"


def _training_run(tmp: Path) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "econlm_run.json").write_text("{}")
    (run / "metrics.json").write_text("{}")
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    return run


def _unloadable_model(tmp: Path) -> Path:
    """A model folder that resolves (it has a config.json) but cannot load: a command that loads it
    before checking --out fails with the load's error instead of the --out one."""
    folder = tmp / "unloadable-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))  # no weights beside it
    return folder


def _adapter_of(tmp: Path, base: Path) -> Path:
    adapter = tmp / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    return adapter


def _adapter_of_unloadable_model(tmp: Path) -> Path:
    return _adapter_of(tmp, _unloadable_model(tmp))


def _model_folder(tmp: Path, config: str) -> Path:
    """A model folder whose config.json holds `config`."""
    folder = tmp / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    return folder


def _convert_into_a_file(tmp: Path, corpus: Path) -> tuple[list[str], str]:
    """`econlm models convert` of a GGUF that cannot be read, whose converted folder in
    $ECONLM_HOME is taken by a file: the folder is refused before the GGUF is read."""
    gguf = tmp / "mine.gguf"
    gguf.write_bytes(b"not a GGUF file")
    taken = tmp / "home" / "models" / f"mine-{hashlib.sha256(gguf.read_bytes()).hexdigest()[:12]}"
    taken.parent.mkdir(parents=True)
    taken.write_text("my notes")
    return ["models", "convert", str(gguf)], f"{taken}: is a file, not a directory"


def _config(text: bytes, message: str, *args: str) -> Callable:
    """`econlm train --config FILE` with a config file holding `text`."""
    def make(tmp: Path, corpus: Path):
        path = tmp / "mine.yaml"
        path.write_bytes(text)
        return ["train", "--config", str(path), *args, "--out", str(tmp / "run")], message.format(file=path)
    return make


def _train(args: list[str], message: str) -> Callable:
    return lambda tmp, corpus: (["train", *args, "--out", str(tmp / "run")], message)


def _eval(args: list[str], message: str) -> Callable:
    return lambda tmp, corpus: (["eval", "--task", "title", "--corpus", str(corpus), "--out", str(tmp / "ev"), *args], message)


def _upload(name: str, data: Callable[[], bytes], message: str) -> Callable:
    """`econlm index add mine notes.md NAME`: one good file beside the bad one, which refuses both."""
    def make(tmp: Path, corpus: Path):
        (tmp / "notes.md").write_bytes(b"# Trade\n\nTariffs raise consumer prices.")
        (tmp / name).write_bytes(data())
        return ["index", "add", "mine", str(tmp / "notes.md"), str(tmp / name), "--max-file-mb", "1"], message
    return make


CASES = [
    # ------------------------------------------------------------------ corpus files
    Case("corpus-empty-file", _validate(lambda c: b"", "{file}: is empty (no records)")),
    Case("corpus-only-blank-lines", _validate(lambda c: b"\n  \n\n", "{file}: is empty (no records)")),
    Case("corpus-binary", _validate(lambda c: bytes(range(256)) * 8, "{file}: is a binary file")),
    Case("corpus-utf16", _validate(lambda c: _good(c).encode("utf-16"), "{file}: is UTF-16 text")),
    Case("corpus-utf16-skip-invalid", _validate(lambda c: _good(c).encode("utf-16"), "{file}: is UTF-16 text",
                                                "--skip-invalid")),
    Case("corpus-utf16-without-bom", _validate(lambda c: _good(c).encode("utf-16-le"), "{file}: is UTF-16 text")),
    Case("corpus-utf32", _validate(lambda c: _good(c).encode("utf-32"), "{file}: is UTF-32 text")),
    Case("corpus-latin1-line", _validate(_second_line(lambda c: _with(c, authors="J. Müller").encode("latin-1")),
                                         "{file}:2: not UTF-8 (byte 0xfc")),
    Case("corpus-truncated-json-line", _validate(_second_line(lambda c: _lines(c)[1][:40]), "{file}:2: invalid JSON")),
    Case("corpus-not-an-object", _validate(_second_line(lambda c: "[1, 2, 3]"), "{file}:2: expected a JSON object")),
    Case("corpus-missing-field", _validate(_second_line(lambda c: _with(c, abstract=None)), "{file}:2: field 'abstract'")),
    Case("corpus-wrong-type", _validate(_second_line(lambda c: _with(c, title=["a", "list"])), "{file}:2: field 'title'")),
    Case("corpus-empty-title", _validate(_second_line(lambda c: _with(c, title="  ")), "{file}:2: field 'title'")),
    Case("corpus-unknown-category", _validate(_second_line(lambda c: _with(c, primary_category="econ.XX")),
                                              "{file}:2: field 'primary_category'")),
    Case("corpus-bad-arxiv-id", _validate(_second_line(lambda c: _with(c, arxiv_id="not-an-id")), "{file}:2: field 'arxiv_id'")),
    Case("corpus-duplicate-id", _validate(_second_line(lambda c: _lines(c)[0]), "{file}:2: duplicate arxiv_id")),
    Case("corpus-missing-file", lambda tmp, c: (["data", "validate", str(tmp / "nope.jsonl")], f"{tmp / 'nope.jsonl'}: no such file")),
    Case("build-empty-train-split", _split_replaced("train", lambda c: b"", "{file}: is empty (no records)")),
    Case("build-latin1-in-validation", _split_replaced(
        "validation", _second_line(lambda c: _with(c, authors="Zoë").encode("latin-1")), "{file}:2: not UTF-8 (byte 0xeb")),
    Case("build-binary-test-split", _split_replaced("test", lambda c: b"\x00\x01\x02" * 100, "{file}: is a binary file")),
    Case("build-missing-split-file", lambda tmp, c: (["data", "build", "--corpus", str(tmp), "--out", str(tmp / "out")],
                                                     f"{tmp}: missing split file(s)")),
    Case("build-paper-in-two-splits", _split_replaced(
        "validation", lambda c: (c / "train.jsonl").read_bytes().split(b"\n", 1)[0] + b"\n", "{corpus}: paper ")),
    Case("build-unknown-task", lambda tmp, c: (["data", "build", "--corpus", str(c), "--tasks", "summary", "--out", str(tmp / "o")],
                                               "unknown task(s) summary")),
    Case("build-qa-without-qa-file", lambda tmp, c: (["data", "build", "--corpus", str(c), "--tasks", "qa", "--out", str(tmp / "o")],
                                                     "task 'qa' needs --qa-file")),
    Case("index-build-utf16-split", _split_replaced("test", lambda c: _good(c).encode("utf-16"), "{file}: is UTF-16 text",
                                                    "index"), slow=True),  # the error comes after the embedder loads
    # ------------------------------------------------------------------ --out
    Case("build-out-is-a-file", _build_into(_a_file, "{out}: is a file, not a directory")),
    Case("build-out-holds-a-users-file", _build_into(_foreign_dir, "{out}: not replaced: it holds 'thesis.tex'")),
    Case("build-out-is-a-training-run", _build_into(_training_run, "{out}: is a training run directory")),
    Case("index-build-out-holds-a-users-file", _build_into(_foreign_dir, "{out}: not replaced: it holds 'thesis.tex'",
                                                           ("index", "build"))),
    Case("eval-out-holds-a-users-file", lambda tmp, c: _eval(["--out", str(_foreign_dir(tmp))], "not replaced: it holds 'thesis.tex'")(tmp, c)),
    Case("eval-out-is-a-file", lambda tmp, c: _eval(["--out", str(_a_file(tmp))], "notes.txt' is a file")(tmp, c)),
    # the commands below would fail loading their model if they did not check --out first
    Case("qa-eval-out-holds-a-users-file", lambda tmp, c: (
        ["qa", "eval", "--model", str(_unloadable_model(tmp)), "--corpus", str(c), "--out", str(_foreign_dir(tmp))],
        f"{tmp / 'thesis'}: not replaced: it holds 'thesis.tex'")),
    Case("classify-split-out-is-a-training-run", lambda tmp, c: (
        ["classify", "--split", "test", "--classifier", str(_unloadable_model(tmp)), "--corpus", str(c),
         "--out", str(_training_run(tmp))], f"{tmp / 'run'}: is a training run directory")),
    Case("merge-out-holds-a-users-file", lambda tmp, c: (
        ["merge", str(_adapter_of_unloadable_model(tmp)), "--out", str(_foreign_dir(tmp))],
        f"{tmp / 'thesis'}: not replaced: it holds 'thesis.tex'")),
    Case("models-convert-into-a-file", _convert_into_a_file),
    Case("qa-eval-model-config-without-model-type", lambda tmp, c: (
        ["qa", "eval", "--model", str(_model_folder(tmp, "{}")), "--corpus", str(c), "--out", str(tmp / "ev")],
        f"{tmp / 'model' / 'config.json'}: no model_type")),
    Case("merge-base-config-not-json", lambda tmp, c: (
        ["merge", str(_adapter_of(tmp, _model_folder(tmp, '{"model_type": '))), "--out", str(tmp / "merged")],
        f"{tmp / 'model' / 'config.json'}:1: invalid JSON")),
    # ------------------------------------------------------------------ training configs
    Case("config-empty", _config(b"", "{file}: is empty")),
    Case("config-only-comments", _config(b"# nothing set yet\n", "{file}: is empty")),
    Case("config-unknown-key", _config(b"train:\n  learning_rte: 0.1\n", "{file}: field 'train.learning_rte': unknown key")),
    Case("config-unknown-section", _config(b"optimiser: {lr: 1}\n", "{file}: field 'optimiser': unknown key")),
    Case("config-wrong-type", _config(b"train:\n  max_steps: ten\n", "{file}: field 'train.max_steps'")),
    Case("config-bad-value", _config(b"lora:\n  dropout: 1.5\n", "{file}: field 'lora.dropout'")),
    Case("config-inconsistent-values", _config(b"data:\n  max_length: 1024\ntrain:\n  micro_batch_tokens: 512\n",
                                               "{file}: field '(top level)': Value error, train.micro_batch_tokens (512)")),
    Case("config-yaml-syntax-error", _config(b"train:\n  max_steps: [1\n", "{file}:3:1: invalid YAML")),
    Case("config-a-list", _config(b"- model\n- train\n", "{file}: expected a mapping of sections")),
    Case("config-latin1", _config(b"train: {max_steps: 1}\nlora: \xe9\n", "{file}: not UTF-8 text")),
    Case("config-bad-override", _config(b"train: {max_steps: 1}\n", "--set 'train.max_steps': expected KEY=VALUE",
                                        "--set", "train.max_steps")),
    Case("config-missing-file", _train(["--config", "missing.yaml"], "missing.yaml: no such config file")),
    Case("config-unknown-preset", _train(["--config", "no-such-preset"], "unknown preset 'no-such-preset'")),
    # ------------------------------------------------------------------ options, checked before anything loads
    Case("eval-dtype-float8", _eval(["--dtype", "float8"], "Invalid value for '--dtype': 'float8'")),
    Case("eval-negative-temperature", _eval(["--temperature", "-1"], "Invalid value for '--temperature'")),
    Case("eval-top-p-zero", _eval(["--top-p", "0"], "Invalid value for '--top-p'")),
    Case("eval-unknown-prompting", _eval(["--prompting", "foo"], "Invalid value for '--prompting': 'foo'")),
    Case("eval-unknown-split", _eval(["--split", "dev"], "Invalid value for '--split': 'dev'")),
    Case("eval-limit-zero", _eval(["--limit", "0"], "Invalid value for '--limit'")),
    Case("eval-unknown-engine", _eval(["--model", "nonsense:x"], "unknown engine 'nonsense'")),
    Case("index-build-limit-zero", lambda tmp, c: (["index", "build", "--corpus", str(c), "--limit", "0", "--out", str(tmp / "i")],
                                                   "Invalid value for '--limit'")),
    # ------------------------------------------------------------------ uploads (econlm index add)
    *[Case(f"upload-{name}", _upload(name, data, message)) for name, data, message in BAD_FILES],
    Case("upload-missing-file", lambda tmp, c: (["index", "add", "mine", str(tmp / "missing.pdf")], "missing.pdf: no such file")),
    Case("upload-index-name-dotdot", lambda tmp, c: (["index", "add", "../etc", str(_a_file(tmp))], "invalid index name '../etc'")),
    Case("upload-index-name-slash", lambda tmp, c: (["index", "add", "a/b", str(_a_file(tmp))], "invalid index name 'a/b'")),
    Case("upload-into-the-papers-index", lambda tmp, c: (["index", "add", "papers", str(_a_file(tmp))],
                                                         "'papers' is the corpus papers index")),
]
CLICK_USAGE_LINES = ("Usage: ", "Try '", "")


def _tree(root: Path) -> dict[str, str]:
    """Every path under `root` with a hash of its bytes (directories as "dir")."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def assert_one_error_line(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and result.stdout == "", (result.stdout, result.stderr[-3000:])
    lines = result.stderr.rstrip("\n").splitlines()
    errors = [line for line in lines if line.startswith(("econlm: error: ", "Error: "))]
    assert len(errors) == 1 and all(line in errors or line.startswith(CLICK_USAGE_LINES) for line in lines), lines
    assert needle in errors[0], (needle, errors[0])


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: Case, small_corpus, tmp_path, home):
    home.mkdir()
    args, needle = case.make(tmp_path, small_corpus)
    before = _tree(tmp_path)
    result = run_cli(*args, home=home)
    assert_one_error_line(result, needle)
    assert _tree(tmp_path) == before


def test_out_dot_is_refused_and_the_current_directory_kept(small_corpus, tmp_path, home):
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("\\section{Introduction}")
    before = _tree(tmp_path)
    for out in (".", str(work), ".."):
        result = subprocess.run([sys.executable, "-m", "econlm.cli", "data", "build", "--corpus", str(small_corpus),
                                 "--out", out], capture_output=True, text=True, cwd=work,
                                env={**os.environ, "ECONLM_HOME": str(home)})
        assert_one_error_line(result, f"{out}: is the current directory or holds it")
        assert _tree(tmp_path) == before

