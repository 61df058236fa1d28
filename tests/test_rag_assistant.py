"""The assistant outside the browser: `econlm.rag`'s Python API, `econlm index add` and `econlm ask`."""

from __future__ import annotations

import json

import pytest

from econlm.errors import UserError
from econlm.rag import Assistant, AssistantAnswer, add_files, store
from conftest import run_cli
from fakes import FakeBackend, HashEmbedder, make_bomb_pdf, make_image_only_pdf, make_pdf

REPORT_PAGES = [
    "Inflation targeting anchors expectations. The central bank raised its policy rate to 4.5 percent in 2023.",
    "Minimum wage increases had small employment effects in the county study.",
]


def test_add_files_then_ask_returns_a_cited_answer(home, tmp_path):
    report = tmp_path / "report.pdf"
    report.write_bytes(make_pdf(REPORT_PAGES))
    notes = tmp_path / "notes.txt"
    notes.write_bytes("Les préférences révélées des ménages.\fZölle auf Stahl.".encode("latin-1"))
    added = add_files("mine", [report, notes], HashEmbedder())
    assert [str(a) for a in added.added] == ["report.pdf (2 pages, 2 chunks)", "notes.txt (2 pages, 2 chunks, read as cp1252)"]
    assert store.read_manifest(store.index_dir("mine"))["sources"][1]["encoding"] == "cp1252"
    assert add_files("mine", [report], HashEmbedder()).skipped == ["report.pdf is already in 'mine' (same content)"]

    backend = FakeBackend()
    assistant = Assistant("mine", model=backend, embedder=HashEmbedder(), k=2)
    reply = assistant.ask("What did minimum wage increases do to employment?")
    assert isinstance(reply, AssistantAnswer) and reply.model == "fake:deterministic" and reply.index == "mine"
    assert reply.citations[0] == "[report.pdf, p. 2]"
    assert reply.cited[0].model_dump() == {"label": "[report.pdf, p. 2]", "source": "report.pdf", "page": 2, "arxiv_id": None}
    summary = reply.summary()
    assert set(summary) == {"question", "index", "answer", "citations", "unsupported_citations", "passages", "model", "timings"}
    assert summary["passages"][0]["text"].startswith("Minimum wage") and summary["timings"]["answer_s"] > 0


def test_nothing_relevant_is_said_without_asking_the_model(home):
    add_files("mine", [("report.pdf", make_pdf(REPORT_PAGES))], HashEmbedder())
    backend = FakeBackend()
    reply = Assistant("mine", model=backend, embedder=HashEmbedder()).ask("How do penguins fly over glaciers?")
    assert reply.text.startswith("Nothing relevant to this question was found in the index 'mine'")
    assert reply.passages == [] and reply.timings.answer_s == 0 and backend.conversations == []


def test_papers_index_answers_cite_arxiv_ids(home, small_corpus):
    store.build_papers_index(small_corpus, store.index_dir("papers"), HashEmbedder(), splits=["test"], progress=False)
    first = store.load_index(store.index_dir("papers")).chunks[0]
    reply = Assistant(model=FakeBackend(), embedder=HashEmbedder(), k=1).ask(first.metadata["title"])
    assert reply.cited[0].arxiv_id == first.metadata["arxiv_id"] and reply.cited[0].label == f"[arXiv:{first.metadata['arxiv_id']}]"


def test_a_bad_file_adds_nothing_and_names_every_bad_file(home):
    add_files("mine", [("report.pdf", make_pdf(REPORT_PAGES))], HashEmbedder())
    manifest = (store.index_dir("mine") / store.MANIFEST).read_bytes()
    with pytest.raises(UserError, match=r"^empty.txt: the file is empty; x.docx: unsupported .*; nothing was added to 'mine'$"):
        add_files("mine", [("notes.md", b"# Trade"), ("empty.txt", b""), ("x.docx", b"PK")], HashEmbedder())
    assert (store.index_dir("mine") / store.MANIFEST).read_bytes() == manifest
    with pytest.raises(UserError, match="'papers' is the corpus papers index"):
        add_files("papers", [("notes.md", b"# Trade")], HashEmbedder())


def _good_pdf() -> bytes:
    return make_pdf(REPORT_PAGES)


BAD_FILES = [
    ("secret.pdf", lambda: make_pdf(["Confidential."], user_password="pw"), "secret.pdf: is encrypted"),
    ("cut.pdf", lambda: _good_pdf()[: len(_good_pdf()) // 2], "cut.pdf: cannot be read as a PDF, it is damaged or truncated"),
    ("bomb.pdf", lambda: make_bomb_pdf(100), "bomb.pdf: parsing stopped at a safety limit"),
    ("empty.txt", lambda: b"", "empty.txt: the file is empty"),
    ("fake.pdf", lambda: b"this is not a PDF at all", "fake.pdf: not a PDF file"),
    ("scan.pdf", make_image_only_pdf, "scan.pdf: no text layer found"),
    ("image.txt", lambda: b"\x89PNG\r\n\x1a\n\xff\xd8\xfe\x81\x9d" * 20, "image.txt: not text in any encoding"),
    ("big.txt", lambda: b"economics " * 120_000, "big.txt: 1.1 MB is over the upload limit of 1 MB"),
]


@pytest.mark.parametrize(("name", "make", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_index_add_refuses_a_bad_file_in_one_line_and_leaves_the_index_unchanged(home, tmp_path, name, make, message):
    add_files("mine", [("report.pdf", _good_pdf())], HashEmbedder())
    before = {p.name: p.read_bytes() for p in store.index_dir("mine").iterdir()}
    (tmp_path / name).write_bytes(make())
    (tmp_path / "notes.md").write_bytes(b"# Trade\n\nTariffs raise consumer prices.")
    result = run_cli("index", "add", "mine", str(tmp_path / "notes.md"), str(tmp_path / name), "--max-file-mb", "1", home=home)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"econlm: error: {message}") and "Traceback" not in result.stderr
    assert result.stderr.rstrip().endswith("nothing was added to 'mine'") and len(result.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in store.index_dir("mine").iterdir()} == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("index", "add", "../etc", "notes.md"), "invalid index name '../etc'"),
        (("index", "add", "a/b", "notes.md"), "invalid index name 'a/b'"),
        (("index", "add", "mine", "missing.pdf"), "missing.pdf: no such file; nothing was added to 'mine'"),
        (("ask", "What is inflation?", "--index", "nope"), "no index named 'nope'"),
        (("ask", "What is inflation?", "--index", "../papers"), "invalid index name '../papers'"),
        (("ask", "   ", "--index", "papers"), "the question is empty"),
        (("ask", "What is inflation?", "--model", "nonsense:x"), "unknown engine 'nonsense'"),
    ],
)
def test_cli_bad_input_is_one_line_with_exit_2(home, args, message):
    result = run_cli(*args, home=home)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"econlm: error: {message}") and "Traceback" not in result.stderr
    assert not store.index_dir("mine").exists()


@pytest.mark.slow
def test_index_add_and_ask_end_to_end_with_minilm(home, tmp_path, tiny_llama):
    (tmp_path / "report.pdf").write_bytes(_good_pdf())
    (tmp_path / "taux.txt").write_bytes("La banque centrale a relevé son taux directeur à 4,5 pour cent.".encode("latin-1"))
    added = run_cli("index", "add", "mine", str(tmp_path / "report.pdf"), str(tmp_path / "taux.txt"), home=home)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == ["indexed report.pdf (2 pages, 2 chunks)", "indexed taux.txt (1 pages, 1 chunks, read as cp1252)"]
    asked = run_cli("ask", "What did minimum wage increases do to employment?", "--index", "mine", "--k", "2",
                    "--model", f"transformers:{tiny_llama}", "--json", home=home)
    assert asked.returncode == 0, asked.stderr
    reply = json.loads(asked.stdout)
    assert reply["model"] == f"transformers:{tiny_llama}" and reply["index"] == "mine"
    assert reply["passages"][0]["label"] == "[report.pdf, p. 2]" and reply["passages"][0]["page"] == 2
    assert reply["timings"]["retrieve_s"] > 0 and reply["timings"]["answer_s"] > 0
    text = run_cli("ask", "What did minimum wage increases do to employment?", "--index", "mine",
                   "--model", f"transformers:{tiny_llama}", home=home)
    assert text.returncode == 0 and "Passages (" in text.stdout and "--- [report.pdf, p. 2]" in text.stdout
