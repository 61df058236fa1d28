"""Corpus validation: every record checked, bad lines named by file and line, exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from econlm.data.corpus import load_corpus, load_papers
from econlm.errors import UserError

GOOD = {
    "arxiv_id": "2104.01234",
    "title": "Difference-in-Differences  with\n $\\alpha$ -- Staggered Adoption",
    "abstract": "We study\tstaggered\n\n adoption designs.",
    "primary_category": "econ.EM",
    "categories": ["econ.EM", "stat.ME"],
    "authors": "A. Author",
    "published": "2021-03-02",
}


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_valid_record_is_normalised_and_keeps_tex(tmp_path):
    paper = load_papers(write(tmp_path / "c.jsonl", [GOOD])).papers[0]
    assert paper.title == "Difference-in-Differences with $\\alpha$ -- Staggered Adoption"
    assert paper.abstract == "We study staggered adoption designs."
    assert paper.year == 2021


def test_old_style_ids_and_missing_categories_are_accepted(tmp_path):
    rows = [
        {**GOOD, "arxiv_id": "1412.5397"},
        {**GOOD, "arxiv_id": "hep-th/9901001"},
        {**GOOD, "arxiv_id": "2305.02531", "categories": None, "primary_category": "econ.GN"},
    ]
    papers = load_papers(write(tmp_path / "c.jsonl", rows)).papers
    assert [p.arxiv_id for p in papers] == ["1412.5397", "hep-th/9901001", "2305.02531"]
    assert papers[2].categories == ["econ.GN"]


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({**GOOD, "arxiv_id": "2104.01234v2"}, "arxiv_id"),
        ({**GOOD, "primary_category": "q-fin.GN", "categories": ["q-fin.GN"]}, "primary_category"),
        ({**GOOD, "title": "   "}, "title"),
        ({k: v for k, v in GOOD.items() if k != "abstract"}, "abstract"),
        ({**GOOD, "published": "March 2021"}, "published"),
        ({**GOOD, "categories": ["stat.ME", "econ.EM"]}, "primary category econ.EM first"),
        ('{"arxiv_id": "2104.0', "invalid JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_line_is_named_by_file_and_line(tmp_path, bad, needle):
    path = write(tmp_path / "c.jsonl", [{**GOOD, "arxiv_id": "2101.00001"}, bad])
    with pytest.raises(UserError) as err:
        load_papers(path)
    assert str(err.value).startswith(f"{path}:2: ")
    assert needle in str(err.value)


def test_skip_invalid_counts_bad_lines_and_duplicates(tmp_path):
    path = write(tmp_path / "c.jsonl", [GOOD, {**GOOD, "title": ""}, GOOD, "not json"])
    result = load_papers(path, skip_invalid=True)
    assert len(result.papers) == 1
    assert [m.split(": ")[0] for m in result.skipped] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "duplicate arxiv_id" in result.skipped[1]



LINE = json.dumps(GOOD, ensure_ascii=False)
ENCODINGS = [
    ("utf-16 with BOM", lambda: LINE.encode("utf-16"), "is UTF-16 text; econlm reads UTF-8"),
    ("utf-16-le without BOM", lambda: LINE.encode("utf-16-le"), "is UTF-16 text; econlm reads UTF-8"),
    ("utf-32", lambda: LINE.encode("utf-32"), "is UTF-32 text"),
    ("binary", lambda: bytes(range(256)) * 8, "is a binary file, not UTF-8 text"),
]


@pytest.mark.parametrize(("data", "message"), [e[1:] for e in ENCODINGS], ids=[e[0] for e in ENCODINGS])
def test_a_file_in_another_encoding_is_refused_even_when_skipping(tmp_path, data, message):
    path = tmp_path / "c.jsonl"
    path.write_bytes(data())
    for skip in (False, True):
        with pytest.raises(UserError, match=f"^{path}: {message}"):
            load_papers(path, skip_invalid=skip)


def test_a_latin1_line_is_named_and_can_be_skipped(tmp_path):
    accented = json.dumps({**GOOD, "arxiv_id": "2101.00002", "authors": "J. Müller"}, ensure_ascii=False)
    path = tmp_path / "c.jsonl"
    path.write_bytes(LINE.encode() + b"\n" + accented.encode("latin-1") + b"\n")
    column = accented.encode("latin-1").index(b"\xfc") + 1
    with pytest.raises(UserError, match=f"^{path}:2: not UTF-8 \\(byte 0xfc at column {column}\\)"):
        load_papers(path)
    result = load_papers(path, skip_invalid=True)
    assert [p.arxiv_id for p in result.papers] == [GOOD["arxiv_id"]] and result.skipped[0].startswith(f"{path}:2: not UTF-8")


def test_a_utf8_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + LINE.encode() + b"\n")
    assert load_papers(path).papers[0].arxiv_id == GOOD["arxiv_id"]


@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "blank lines"])
def test_a_file_without_records_is_refused(tmp_path, text):
    path = tmp_path / "c.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=f"^{path}: is empty \\(no records\\)"):
        load_papers(path, skip_invalid=True)

def test_paper_in_two_splits_is_refused(tmp_path):
    for split in ("train", "validation", "test"):
        write(tmp_path / f"{split}.jsonl", [{**GOOD, "arxiv_id": {"train": "2101.00001", "validation": "2101.00002", "test": "2101.00001"}[split]}])
    with pytest.raises(UserError, match="in both train and test"):
        load_corpus(tmp_path)


def test_cli_validate_exit_codes(tmp_path):
    good = write(tmp_path / "good.jsonl", [GOOD])
    bad = write(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "arxiv_id": "nope"}])
    cmd = [sys.executable, "-m", "econlm.cli", "data", "validate"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "1 valid records" in ok.stdout
    fail = subprocess.run([*cmd, str(good), str(bad)], capture_output=True, text=True)
    assert fail.returncode == 2
    assert fail.stderr.strip().splitlines() == [f"econlm: error: {bad}:2: field 'arxiv_id': Value error, not an arXiv id without version suffix: 'nope'"]
    skip = subprocess.run([*cmd, "--skip-invalid", str(bad)], capture_output=True, text=True)
    assert skip.returncode == 0
    assert "1 valid records, 1 skipped" in skip.stdout


def test_shared_corpus_is_valid(shared_corpus):
    corpus = load_corpus(shared_corpus)
    assert {k: len(v) for k, v in corpus.items()} == {"train": 7230, "validation": 350, "test": 350}
