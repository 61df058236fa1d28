"""`econlm index list` checks each index's files, and loading a damaged one fails in one line.

Every case damages a whole index the way a crash, a full disk or a hand edit would, then reads it
three ways: `list_indexes(verify=True)`, `econlm index list` (status column, exit 1) and
`load_index` (the UserError every loader of the app, `ask` and LangChain's retriever raises).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import run_cli
from econlm.cli import app as _app  # noqa: F401  (registers the commands on the group)
from econlm.cli._base import main as cli
from econlm.errors import UserError
from econlm.rag import store
from econlm.rag.loaders import load_bytes
from fakes import HashEmbedder, make_pdf


def truncate_faiss(path):
    data = (path / store.INDEX_FILE).read_bytes()
    (path / store.INDEX_FILE).write_bytes(data[: len(data) // 2])


def edit_chunks(path):
    text = (path / store.CHUNKS_FILE).read_text(encoding="utf-8")
    (path / store.CHUNKS_FILE).write_text(text.replace("Tariffs", "Subsidies", 1), encoding="utf-8")


def wrong_n_chunks(path):
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["n_chunks"] += 1
    (path / store.MANIFEST).write_text(json.dumps(manifest))


def remove(name):
    return lambda path: (path / name).unlink()


DAMAGE = {
    "truncated index.faiss": (truncate_faiss, "index.faiss does not match the sha256 in manifest.json (corrupt or replaced); refused"),
    "edited chunks.jsonl": (edit_chunks, "chunks.jsonl does not match the sha256 in manifest.json (corrupt or replaced); refused"),
    "wrong n_chunks": (wrong_n_chunks, "manifest.json says 3 chunks but chunks.jsonl holds 2; the index is inconsistent, rebuild it"),
    "missing index.faiss": (remove(store.INDEX_FILE), "index.faiss is missing; the index is incomplete, rebuild it"),
    "missing chunks.jsonl": (remove(store.CHUNKS_FILE), "chunks.jsonl is missing; the index is incomplete, rebuild it"),
    "missing manifest.json": (remove(store.MANIFEST), "not an econlm index (no manifest.json); refused."),
}


def make_index(name, embedder=None):
    documents = [load_bytes("trade.txt", b"Tariffs raise import prices."),
                 load_bytes("labour.pdf", make_pdf(["Minimum wages and teen employment."]))]
    return store.add_documents(store.index_dir(name), documents, embedder or HashEmbedder()).index


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_index_is_listed_as_broken_and_refused(home, case):
    damage, reason = DAMAGE[case]
    make_index("good")
    damage(make_index("bad").path)
    rows = {r["name"]: r["status"] for r in store.list_indexes(verify=True)}
    assert rows == {"good": "ok", "bad": f"broken: {reason}"}

    result = CliRunner().invoke(cli, ["index", "list"])
    assert result.exit_code == 1
    assert "broken: bad (rebuild, or `econlm index delete NAME`)" in result.stderr
    assert "ok" in result.stdout and "broken:" in result.stdout

    with pytest.raises(UserError) as error:
        store.load_index(store.index_dir("bad"))
    assert str(error.value) == f"{store.index_dir('bad')}: {reason}"
    assert "\n" not in str(error.value)


def test_fast_listing_reads_manifests_only(home):
    truncate_faiss(make_index("bad").path)
    result = CliRunner().invoke(cli, ["index", "list", "--fast"])
    assert result.exit_code == 0 and "unverified" in result.stdout and "broken" not in result.output
    assert CliRunner().invoke(cli, ["index", "list"]).exit_code == 1


def test_whole_indexes_are_ok_and_the_real_command_exits_0(home):
    make_index("mine")
    result = run_cli("index", "list", home=home)
    assert result.returncode == 0 and result.stderr == ""
    assert "mine" in result.stdout and " ok " in result.stdout


def test_the_real_command_reports_broken_in_one_line(home):
    edit_chunks(make_index("mine").path)
    result = run_cli("index", "list", home=home)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["broken: mine (rebuild, or `econlm index delete NAME`)"]


@pytest.mark.slow
def test_asking_a_broken_index_is_one_line_exit_2(home):
    """`econlm ask` loads MiniLM, then the index: the index must claim MiniLM to get as far as its files."""
    from econlm.rag.embeddings import MINILM_DISTRIBUTION, MINILM_VERSION

    minilm_named = HashEmbedder()
    minilm_named.name = f"all-MiniLM-L6-v2@{MINILM_DISTRIBUTION}=={MINILM_VERSION}"
    truncate_faiss(make_index("mine", minilm_named).path)
    result = run_cli("ask", "What do tariffs do?", "--index", "mine", home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("econlm: error:")]  # after MiniLM's loading bar
    assert errors == [f"econlm: error: {store.index_dir('mine')}: index.faiss does not match the sha256 in manifest.json "
                      "(corrupt or replaced); refused"]
    assert result.stderr.strip().splitlines()[-1] == errors[0]


def test_a_manifest_missing_a_field_is_broken_not_a_traceback(home):
    path = make_index("mine").path
    manifest = json.loads((path / store.MANIFEST).read_text())
    del manifest["kind"]
    (path / store.MANIFEST).write_text(json.dumps(manifest))
    result = run_cli("index", "list", home=home)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert store.list_indexes()[0]["status"] == "broken: manifest.json lacks kind; refused, rebuild the index"
