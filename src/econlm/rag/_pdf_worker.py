"""Parse one PDF from stdin inside resource limits; print {"pages": [...]} or {"error": ...} as JSON.

Run as a subprocess by `econlm.rag.loaders` so that a hostile PDF (a decompression bomb, a
pathological object graph) can exhaust only this process: its address space is capped with
RLIMIT_AS and the parent kills it after a wall-clock timeout.
"""

from __future__ import annotations

import json
import logging
import resource
import sys


def _parse(data: bytes, max_pages: int, max_chars: int) -> dict:
    import io

    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many PDFs are "encrypted" only to carry permission flags, with an empty user password.
            try:
                opened = reader.decrypt("")
            except (DependencyError, NotImplementedError) as exc:
                return {"error": "encrypted", "detail": str(exc)}
            if not opened:
                return {"error": "encrypted", "detail": "a password is required"}
        n_pages = len(reader.pages)
        if n_pages > max_pages:
            return {"error": "too-many-pages", "detail": f"{n_pages} pages"}
        pages, total = [], 0
        for page in reader.pages:
            text = (page.extract_text() or "").replace("\x00", "")
            total += len(text)
            if total > max_chars:
                return {"error": "too-much-text", "detail": f"over {max_chars} characters"}
            pages.append(text)
        return {"pages": pages}
    except LimitReachedError as exc:
        return {"error": "limit", "detail": str(exc)}
    except FileNotDecryptedError as exc:
        return {"error": "encrypted", "detail": str(exc)}
    except MemoryError:
        return {"error": "memory", "detail": ""}
    except RecursionError:
        return {"error": "malformed", "detail": "object nesting too deep"}
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError,
            AssertionError, UnicodeError, ZeroDivisionError) as exc:
        # pypdf reports a damaged file through many exception types; all mean "cannot read it".
        return {"error": "malformed", "detail": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    memory_mb, max_pages, max_chars = (int(a) for a in sys.argv[1:4])
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.disable(logging.WARNING)  # pypdf logs every repair it makes; the parent reports errors
    data = sys.stdin.buffer.read()
    try:
        result = _parse(data, max_pages, max_chars)
    except MemoryError:
        result = {"error": "memory", "detail": ""}
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
