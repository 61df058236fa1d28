"""Loading uploads: page numbers kept, and every bad input refused with one clear sentence."""

from __future__ import annotations

import time

import pytest

from econlm.errors import UserError
from econlm.rag.loaders import MB, ParseLimits, load_bytes, load_path
from econlm.rag.splitter import split_documents
from fakes import make_bomb_pdf, make_image_only_pdf, make_pdf


def test_pdf_pages_keep_their_numbers():
    doc = load_bytes("report.pdf", make_pdf(["Inflation targeting works.", "Labour markets are tight."]))
    assert doc.source == "report.pdf" and doc.metadata["kind"] == "pdf"
    assert [p.strip() for p in doc.pages] == ["Inflation targeting works.", "Labour markets are tight."]
    chunks = split_documents([doc])
    assert [(c.page, c.text) for c in chunks] == [(1, "Inflation targeting works."), (2, "Labour markets are tight.")]


def test_text_and_markdown_with_form_feed_pages(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("\ufeffFirst page about tariffs.\fSecond page about quotas.".encode())
    doc = load_path(path)
    assert doc.pages == ["First page about tariffs.", "Second page about quotas."]
    md = load_bytes("README.md", b"# Heading\n\nSome text on trade.")
    assert md.metadata["kind"] == "markdown" and split_documents([md])[0].page == 1


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("Préférences révélées".encode("latin-1"), "cp1252"),
        ("Der “Euro” stieg um 5 € – Zölle".encode("cp1252"), "cp1252"),
        ("Préférences révélées\fZölle".encode("utf-16"), "utf-16"),
        ("\ufeffPréférences révélées".encode(), "utf-8-sig"),
        ("Денежно-кредитная политика центрального банка влияет на инфляцию.".encode("cp1251"), "cp1251"),
    ],
)
def test_text_in_other_encodings_is_decoded_and_the_encoding_recorded(data, encoding):
    doc = load_bytes("notes.txt", data)
    assert doc.metadata["encoding"] == encoding
    assert doc.pages[0] in data.decode(encoding).split("\f")[0] and "\ufeff" not in doc.pages[0]


def test_long_page_is_split_into_overlapping_chunks():
    sentence = "Monetary policy affects output through the credit channel. "
    doc = load_bytes("long.txt", (sentence * 60).encode())
    chunks = split_documents([doc], chunk_size=300, chunk_overlap=60)
    assert len(chunks) > 5 and all(len(c.text) <= 300 and c.page == 1 for c in chunks)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("slides.docx", b"PK\x03\x04 not supported", "unsupported file type '.docx'"),
        ("noext", b"text", "unsupported file type '(none)'"),
        ("empty.pdf", b"", "the file is empty"),
        ("empty.txt", b"", "the file is empty"),
        ("blank.md", b"   \n\n ", "contains no text"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\xff\xd8\xfe\x81\x9d" * 20, "not text in any encoding econlm can detect (byte 0x89 at position 0"),
        ("binary.txt", b"abc\x00def", "binary file"),
        ("fake.pdf", b"this is not a PDF at all", "not a PDF file"),
    ],
)
def test_bad_inputs_are_refused_with_a_message(name, data, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_bytes(name, data)


def test_file_over_the_upload_limit(tmp_path):
    data = b"a" * (2 * MB + 1)
    with pytest.raises(UserError, match=r"big.txt: 2.0 MB is over the upload limit of 2 MB"):
        load_bytes("big.txt", data, ParseLimits(max_bytes=2 * MB))
    (tmp_path / "big.txt").write_bytes(data)
    with pytest.raises(UserError, match="over the upload limit"):
        load_path(tmp_path / "big.txt", ParseLimits(max_bytes=2 * MB))


def test_encrypted_pdf():
    with pytest.raises(UserError, match=r"secret.pdf: is encrypted \(password-protected\)"):
        load_bytes("secret.pdf", make_pdf(["Confidential forecast."], user_password="hunter2"))


def test_pdf_encrypted_only_for_permissions_opens():
    """An empty user password is how PDFs carry permission flags; such files open normally."""
    doc = load_bytes("restricted.pdf", make_pdf(["Open to read."], user_password=""))
    assert doc.pages[0].strip() == "Open to read."


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated_pdf(fraction):
    data = make_pdf(["Page one of a report.", "Page two of a report."])
    with pytest.raises(UserError, match="cannot be read as a PDF, it is damaged or truncated"):
        load_bytes("cut.pdf", data[: int(len(data) * fraction)])


def test_pdf_without_text_layer_needs_ocr():
    with pytest.raises(UserError, match=r"scan.pdf: no text layer found in 1 page\(s\).*needs OCR"):
        load_bytes("scan.pdf", make_image_only_pdf())


def test_decompression_bomb_is_stopped_quickly():
    bomb = make_bomb_pdf(expanded_mb=100)
    assert len(bomb) < 1 * MB
    started = time.perf_counter()
    with pytest.raises(UserError, match="bomb.pdf: parsing stopped at a safety limit.*decompression bomb"):
        load_bytes("bomb.pdf", bomb)
    assert time.perf_counter() - started < 30


def test_parser_process_is_bounded_in_time_and_memory():
    """The subprocess bounds hold where pypdf's own limit (75 MB per stream) does not trigger."""
    bomb = make_bomb_pdf(expanded_mb=60)
    with pytest.raises(UserError, match=r"parsing took longer than 0.2 s and was stopped"):
        load_bytes("slow.pdf", bomb, ParseLimits(seconds=0.2))
    with pytest.raises(UserError, match=r"needs more than 128 MB to parse \(a decompression bomb\?\)"):
        load_bytes("big.pdf", bomb, ParseLimits(memory_mb=128))


def test_too_many_pages():
    with pytest.raises(UserError, match=r"has too many pages \(3 pages; the limit is 2\)"):
        load_bytes("long.pdf", make_pdf(["a", "b", "c"]), ParseLimits(max_pages=2))
