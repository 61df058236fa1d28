"""Turn uploaded files (PDF, plain text, Markdown) into `Document`s with their page numbers.

Every way a file can be bad ends in a `UserError` with one sentence the app shows as is: wrong
extension, empty, over the upload limit, bytes that are text in no encoding, encrypted, damaged,
no text layer (needs OCR), or too costly to parse. PDFs are parsed in a subprocess
(`econlm.rag._pdf_worker`) with a capped address space and a wall-clock timeout, so a
decompression bomb cannot take the app down.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from econlm.errors import UserError
from econlm.types import Document

KINDS = {".pdf": "pdf", ".txt": "text", ".md": "markdown", ".markdown": "markdown"}
MB = 1024 * 1024


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on what one file may cost; the app sets `max_bytes` from `server.maxUploadSize`."""

    max_bytes: int = 50 * MB
    seconds: float = 60.0  # wall clock for parsing one PDF
    memory_mb: int = 1024  # address-space cap of the PDF parser process
    max_pages: int = 5000
    max_chars: int = 20_000_000


def load_path(path: str | Path, limits: ParseLimits = ParseLimits()) -> Document:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    size = path.stat().st_size
    if size > limits.max_bytes:  # checked before reading the file into memory
        raise UserError(_too_big(path.name, size, limits.max_bytes))
    return load_bytes(path.name, path.read_bytes(), limits)


def load_bytes(name: str, data: bytes, limits: ParseLimits = ParseLimits()) -> Document:
    """Parse one file's content; `name` decides the format by its extension."""
    name = Path(name).name  # never trust a directory part in an uploaded name
    kind = KINDS.get(Path(name).suffix.lower())
    if kind is None:
        raise UserError(
            f"{name}: unsupported file type '{Path(name).suffix or '(none)'}'; upload a PDF, .txt or .md file"
        )
    if not data:
        raise UserError(f"{name}: the file is empty")
    if len(data) > limits.max_bytes:
        raise UserError(_too_big(name, len(data), limits.max_bytes))
    metadata = {"kind": kind, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if kind == "pdf":
        pages = _pdf_pages(name, data, limits)
    else:
        text, metadata["encoding"] = decode_text(name, data)
        pages = text.replace("\r\n", "\n").split("\f")  # form feeds (pdftotext, printers) separate pages
    if not any(p.strip() for p in pages):
        if kind == "pdf":
            raise UserError(
                f"{name}: no text layer found in {len(pages)} page(s) (a scan or images only?); "
                "it needs OCR first, which econlm does not do"
            )
        raise UserError(f"{name}: the file contains no text")
    return Document(source=name, pages=pages, metadata=metadata)


def _too_big(name: str, size: int, limit: int) -> str:
    return f"{name}: {size / MB:.1f} MB is over the upload limit of {limit / MB:.0f} MB (server.maxUploadSize)"


# Tried after UTF-8: the Windows code page most Western text files in other encodings use; a
# superset of Latin-1's printable characters (WHATWG decodes "latin1" as it too). charset-normalizer
# ranks it below look-alikes (mac_latin2, johab) on short French or German text, so it is asked
# first whether cp1252 reads cleanly, and only then to guess among every encoding it knows.
WESTERN_ENCODING = "cp1252"
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_text(name: str, data: bytes) -> tuple[str, str]:
    """The text and the encoding it was read in: a BOM's, else UTF-8, else what charset-normalizer detects.

    Only bytes that read as text in no encoding (or hold NUL bytes, as binaries do) are refused.
    """
    from charset_normalizer import from_bytes

    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), None)
    if encoding is None:
        try:
            data.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError as exc:
            match = from_bytes(data, cp_isolation=[WESTERN_ENCODING]).best() or from_bytes(data).best()
            if match is None:
                raise UserError(
                    f"{name}: not text in any encoding econlm can detect (byte 0x{data[exc.start]:02x} at "
                    f"position {exc.start} is not UTF-8, and no other encoding fits); is it a binary file?"
                ) from None
            encoding = match.encoding
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:  # a BOM followed by bytes that do not fit it
        raise UserError(f"{name}: starts with a {encoding} byte-order mark but is not {encoding} text ({exc.reason})") from None
    if "\x00" in text:
        raise UserError(f"{name}: looks like a binary file, not text (contains NUL bytes)")
    return text, encoding


def _pdf_pages(name: str, data: bytes, limits: ParseLimits) -> list[str]:
    if b"%PDF-" not in data[:1024]:  # where the PDF spec lets readers look for the header
        raise UserError(f"{name}: not a PDF file (no %PDF- header); it may be damaged or another format")
    command = [sys.executable, "-m", "econlm.rag._pdf_worker",
               str(limits.memory_mb), str(limits.max_pages), str(limits.max_chars)]
    try:
        proc = subprocess.run(command, input=data, capture_output=True, timeout=limits.seconds, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(
            f"{name}: parsing took longer than {limits.seconds:g} s and was stopped "
            "(a decompression bomb or a pathological PDF?)"
        ) from None
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        # Killed by the memory cap (MemoryError can escape as a crash) or a crash in the parser.
        raise UserError(
            f"{name}: the PDF parser stopped (exit {proc.returncode}) before finishing; the file needs "
            f"more than {limits.memory_mb} MB to parse or is damaged"
        ) from None
    if "pages" in result:
        return result["pages"]
    error, detail = result["error"], result.get("detail", "")
    messages = {
        "encrypted": "is encrypted (password-protected); remove the protection and upload it again",
        "malformed": f"cannot be read as a PDF, it is damaged or truncated ({detail})",
        "limit": f"parsing stopped at a safety limit, the PDF expands to too much data (a decompression bomb?): {detail}",
        "memory": f"needs more than {limits.memory_mb} MB to parse (a decompression bomb?)",
        "too-many-pages": f"has too many pages ({detail}; the limit is {limits.max_pages})",
        "too-much-text": f"has too much text ({detail})",
    }
    raise UserError(f"{name}: {messages.get(error, error)}")
