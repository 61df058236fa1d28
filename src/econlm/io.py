"""Atomic file output, JSONL and hashing shared by every stage.

Every output is written to a temporary sibling and renamed into place, so an interrupted
command never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from econlm import __version__
from econlm.errors import UserError


def _new_temp_sibling(path: Path, make: Callable[[Path], Any], tag: str = "") -> tuple[Path, Any]:
    """`make(.NAME.TAGXXXXXXXX.tmp)` beside `path` under a fresh random name, retried on a clash.

    Not tempfile.mkstemp/mkdtemp: they create with mode 0600/0700, which the rename would carry
    onto outputs other users are meant to read; `make` creates with 0666/0777 and lets the
    umask (and a directory's default ACL) decide, as a plain open() or mkdir does.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{tag}{secrets.token_hex(4)}.tmp")
        try:
            return tmp, make(tmp)
        except FileExistsError:
            continue


def _create_file(tmp: Path) -> None:
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A new empty file beside `path`, renamed onto it when the block succeeds and removed when it
    fails, for writers that take a path rather than a file handle (the GGUF writer, llama.cpp's
    quantiser). It gets the mode a plain open() gives a new file (0644 under umask 022)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, _ = _new_temp_sibling(path, _create_file)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file next to `path` (`atomic_path`); on success fsync it and rename it over `path`."""
    binary = "b" in mode
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if binary else encoding) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write dicts (or pydantic models) as JSONL atomically; returns the row count."""
    n = 0
    with atomic_open(path, "w") as fh:
        for row in rows:
            if hasattr(row, "model_dump"):
                row = row.model_dump(mode="json")
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


def utf8_lines(path: str | Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, None) per line of a UTF-8 text file, or (line number, None, why) for a
    line that is not UTF-8, so a caller can skip it. A whole file in another Unicode encoding, or
    a binary one, is a UserError: no line of it could be read. A UTF-8 byte-order mark is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with path.open("rb") as fh:
        head = fh.read(8192)
        bom = next((name for mark, name in _BOMS.items() if head.startswith(mark)), None)
        if bom:
            raise UserError(f"{path}: is {bom} text; econlm reads UTF-8 (convert it, e.g. iconv -f {bom} -t UTF-8)")
        if b"\x00" in head:
            if max(head[0::2].count(0), head[1::2].count(0)) > len(head) // 4:  # every other byte NUL
                raise UserError(f"{path}: is UTF-16 text; econlm reads UTF-8 (convert it, e.g. iconv -f UTF-16 -t UTF-8)")
            raise UserError(f"{path}: is a binary file, not UTF-8 text")
        fh.seek(0)
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield lineno, raw.decode("utf-8"), None
            except UnicodeDecodeError as exc:
                yield lineno, None, (f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                     "econlm reads UTF-8 text")


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file holding one object (a model folder's config.json); a broken file is a UserError
    naming its line, as `read_jsonl` does for each line."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line; bad JSON is a UserError naming the line."""
    path = Path(path)
    for lineno, line, problem in utf8_lines(path):
        if problem:
            raise UserError(f"{path}:{lineno}: {problem}")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object")
        yield lineno, obj


OUTPUT_MARKER = ".econlm-output.json"  # written last into every directory `atomic_dir` makes
# How a directory econlm wrote before OUTPUT_MARKER existed is recognised: its manifest or
# metrics file (data build and index; eval, qa eval, baselines' runs; baselines; report;
# models convert; merge; classifier fit; checkpoints).
LEGACY_MANIFESTS = ("manifest.json", "metrics.json", "summary.json", "results.json", "econlm_model.json",
                    "econlm_merged.json", "classifier.json", "trainer_state.json")
TRAINING_RUN_FILE = "econlm_run.json"  # with checkpoints/ beside it: a training run, never replaced
_RENAME_EXCHANGE = 2  # linux/fs.h


def check_out_dir(path: str | Path) -> Path:
    """Refuse an output directory whose replacement would lose what econlm did not write.

    Allowed: a missing path; an empty directory; one whose OUTPUT_MARKER lists every entry in it;
    one an earlier econlm wrote without the marker, recognised by one of LEGACY_MANIFESTS. Never a
    training run (hours of work no output should replace), a file, or the current directory.
    Returns where the directory is written (a symbolic link's target). Commands call it before
    long work so a refusal comes first; `atomic_dir` calls it again before the swap.
    """
    given = Path(path)
    target = given.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise UserError(f"{given}: is the current directory or holds it; give a new directory to write")
    if target.exists() and not target.is_dir():
        raise UserError(f"{given}: is a file, not a directory; give a directory to write")
    if not target.is_dir():
        return target
    if (target / TRAINING_RUN_FILE).is_file() and (target / "checkpoints").is_dir():
        raise UserError(f"{given}: is a training run directory; econlm does not replace it, choose another directory")
    foreign = _foreign_entries(target)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UserError(f"{given}: not replaced: it holds {foreign[0]!r}{more}, which econlm did not write; "
                        "move it away or choose another directory")
    return target


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of `folder` that econlm did not write (all of them where it wrote none)."""
    names = sorted(p.name for p in folder.iterdir())
    marker = folder / OUTPUT_MARKER
    if marker.is_file():
        try:
            written = json.loads(marker.read_text(encoding="utf-8"))["entries"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            written = []
        return [n for n in names if n != OUTPUT_MARKER and n not in written]
    if any((folder / name).is_file() for name in LEGACY_MANIFESTS):
        return []
    return names


_LEFTOVER = r"\.{name}\.(?:(?P<pid>\d+)-)?[a-z0-9_]{{8}}\.(?:tmp|old)|\.{name}\.old"


def remove_leftovers(path: str | Path) -> list[Path]:
    """Clear what killed writes of `path` left beside it; returns what was removed.

    Temp (`.NAME.PID-XXXXXXXX.tmp`) and old (`.PID-XXXXXXXX.old`) directories of a writer that is
    still running are kept; names without a PID come from earlier versions, whose writers never
    run beside this one. If `path` itself is missing (a kill between the two renames of the
    fallback swap), the old directory is put back instead of removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(_LEFTOVER.format(name=re.escape(path.name)))
    stale = []
    for entry in sorted(path.parent.iterdir(), key=lambda p: p.name):
        match = pattern.fullmatch(entry.name)
        if match and not (match["pid"] and _alive(int(match["pid"]))):
            stale.append(entry)
    olds = [p for p in stale if p.name.endswith(".old") and p.is_dir()]
    if olds and not os.path.lexists(path):
        os.replace(olds[0], path)
        stale.remove(olds[0])
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    return stale


def _alive(pid: int) -> bool:
    """Whether `pid` runs (this process counts: another thread may be writing)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the OS
    or file system has no such call. Called through ctypes: the `renameat2` package on PyPI wraps
    the same one call and has not been released since 2022."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (directories cannot be opened on Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temp name; put it in place only when the block succeeds.

    Readers always find a whole directory at `path`: the old and new are exchanged in one
    renameat2(RENAME_EXCHANGE) and only then is the old one removed. (A symbolic link to
    versioned directories would do the same anywhere, but would make every output a link,
    which copying, packaging and `shutil.rmtree` treat differently from a directory.) Where the
    exchange is unsupported, the old directory is renamed aside first, so `path` is missing for
    an instant. Only a directory `check_out_dir` allows is replaced; leftovers of killed writes
    are cleared first (`remove_leftovers`), and OUTPUT_MARKER, listing the entries, is added last.
    """
    target = check_out_dir(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp, _ = _new_temp_sibling(target, os.mkdir, tag=f"{os.getpid()}-")
    try:
        yield tmp
        entries = sorted(p.name for p in tmp.iterdir())
        atomic_write_json(tmp / OUTPUT_MARKER, {"written_by": "econlm", "version": __version__, "entries": entries})
        check_out_dir(path)
        if target.is_dir():
            if _exchange(tmp, target):
                _fsync_dir(target.parent)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str | Path, pattern: str = "*") -> str:
    """A stable hash over the names and contents of the files under `path` matching `pattern`."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob(pattern) if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()
