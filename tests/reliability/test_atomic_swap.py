"""kill -9 trials of a directory write (`econlm.io.atomic_dir`, through the papers index that
`econlm index build` writes): wherever the writer dies, a reader finds a whole index, and the next
write clears what the killed one left.

The writer is this file run as a script (`python test_atomic_swap.py POINT OUT CORPUS LIMIT`): it
builds the index with the hashed bag-of-words embedder (no model to load) and stops at POINT,
printing "paused", until the test kills it. Trials run on both swaps atomic_dir has: one
renameat2(RENAME_EXCHANGE), and the two renames used where the exchange is unsupported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# kill point -> (swap, what the reader finds at OUT after the kill: "old", "new" or "nothing")
KILL_POINTS = {
    "exchange:building": ("exchange", "old"),  # the new index is complete in its temp dir, not yet in place
    "exchange:swapped": ("exchange", "new"),  # exchanged; the old index not yet removed
    "fallback:building": ("fallback", "old"),
    "fallback:between-renames": ("fallback", "nothing"),  # the old index renamed aside, the new one not yet in
    "fallback:renamed": ("fallback", "new"),  # both renames done; the old index not yet removed
}
OLD, NEW, NEXT = 3, 5, 4  # papers in the index before, in the killed write, in the write after


def _pause() -> None:
    print("paused", flush=True)
    time.sleep(600)


def _writer(point: str, out: Path, corpus: Path, limit: int) -> None:
    """Build the papers index at OUT, stopping at `point` inside `atomic_dir` (test hooks patched in)."""
    sys.path.insert(0, str(HERE.parent))
    from fakes import HashEmbedder

    from econlm import io
    from econlm.rag import store

    swap, stage = point.split(":")
    target = out.resolve()
    if swap == "fallback":
        io._exchange = lambda a, b: False
    if stage == "building":
        write_json = io.atomic_write_json
        io.atomic_write_json = lambda path, obj: (_pause() if Path(path).name == io.OUTPUT_MARKER else None,
                                                  write_json(path, obj))
    elif stage == "swapped":
        exchange = io._exchange
        io._exchange = lambda a, b: exchange(a, b) and (_pause() or True)
    else:
        replace = os.replace

        def pausing_replace(src, dst):
            replace(src, dst)
            if (stage == "between-renames" and Path(src) == target) or (stage == "renamed" and Path(dst) == target):
                _pause()

        io.os.replace = pausing_replace
    store.build_papers_index(corpus, out, HashEmbedder(), splits=["test"], limit=limit, progress=False)


def _build(out: Path, corpus: Path, limit: int):
    from fakes import HashEmbedder

    from econlm.rag import store

    return store.build_papers_index(corpus, out, HashEmbedder(), splits=["test"], limit=limit, progress=False)


def _papers(out: Path) -> int | None:
    """How many papers the index at OUT holds, read as any reader would (manifest, FAISS, chunks)."""
    from econlm.rag import store

    if not out.exists():
        return None
    index = store.load_index(out)
    assert len(index.chunks) == index.faiss_index.ntotal == index.manifest["n_chunks"]
    return len(index.manifest["sources"])


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and not p.name.endswith(".lock"))


def _kill_at(point: str, out: Path, corpus: Path) -> None:
    proc = subprocess.Popen([sys.executable, __file__, point, str(out), str(corpus), str(NEW)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "paused", f"the writer ended before {point}: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_killed_write_leaves_a_whole_index_and_the_next_write_clears_its_leftovers(point, small_corpus, tmp_path):
    swap, found = KILL_POINTS[point]
    out = tmp_path / "indexes" / "papers"
    _build(out, small_corpus, OLD)
    _kill_at(point, out, small_corpus)

    assert _papers(out) == {"old": OLD, "new": NEW, "nothing": None}[found]
    assert _leftovers(out), "the killed write left nothing to clear: the kill point was not reached"
    if found == "nothing":  # only where the exchange is unsupported: the next write puts the old index back first
        from econlm.io import remove_leftovers

        remove_leftovers(out)
        assert _papers(out) == OLD

    _build(out, small_corpus, NEXT)
    assert _papers(out) == NEXT
    assert _leftovers(out) == []


def test_a_reader_never_finds_the_index_missing_or_partial_while_it_is_rewritten(small_corpus, tmp_path):
    """A reader polling the directory while another process rewrites it 40 times.

    Opening the path always gives a whole directory. One opened just before a swap is the old one,
    which the writer then empties: a reader that lists it late sees it shrink, and can tell (it is
    no longer the directory at the path), as a reader checking the manifest's hashes does.
    """
    from econlm.io import OUTPUT_MARKER
    from econlm.rag import store

    out = tmp_path / "papers"
    _build(out, small_corpus, OLD)
    whole = {OUTPUT_MARKER, store.MANIFEST, store.INDEX_FILE, store.CHUNKS_FILE}
    script = ("import sys; sys.path.insert(0, sys.argv[3]); from fakes import HashEmbedder; from econlm.rag import store\n"
              "for i in range(40): store.build_papers_index(sys.argv[1], sys.argv[2], HashEmbedder(), splits=['test'],"
              " limit=3 + i % 3, progress=False)")
    writer = subprocess.Popen([sys.executable, "-c", script, str(small_corpus), str(out), str(HERE.parent)],
                              stderr=subprocess.PIPE, text=True)
    looks, missing, partial, swapped_out = 0, 0, [], 0
    while writer.poll() is None:
        try:
            fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            missing += 1
            continue
        try:
            names = set(os.listdir(fd))
            in_place = os.fstat(fd).st_ino == os.stat(out).st_ino
        finally:
            os.close(fd)
        looks += 1
        if names != whole:
            if in_place:
                partial.append(sorted(names))
            else:
                swapped_out += 1
    assert writer.returncode == 0, writer.stderr.read()[-2000:]
    assert looks > 0 and missing == 0 and partial == [], (looks, missing, partial[:3], swapped_out)
    assert _papers(out) == 3 + 39 % 3 and _leftovers(out) == []


def _made_by_econlm(out: Path) -> None:
    from econlm.io import atomic_dir

    with atomic_dir(out) as tmp:
        (tmp / "metrics.json").write_text("{}")


# what is at OUT -> whether atomic_dir may replace it
OUT_STATES = {
    "missing": (lambda out: None, True),
    "empty": (lambda out: out.mkdir(), True),
    "written by econlm": (_made_by_econlm, True),
    "written by econlm, then a user's file added": (lambda out: (_made_by_econlm(out), (out / "notes.md").write_text("x")), False),
    "written by an earlier econlm (its manifest, no marker)": (
        lambda out: (out.mkdir(), (out / "manifest.json").write_text("{}"), (out / "train").mkdir()), True),
    "a user's folder": (lambda out: (out.mkdir(), (out / "thesis.tex").write_text("x")), False),
    "a file": (lambda out: out.write_text("x"), False),
    "a shipped adapter (econlm_run.json, no checkpoints)": (
        lambda out: (out.mkdir(), (out / "econlm_run.json").write_text("{}"), (out / "metrics.json").write_text("{}")), True),
    "a training run": (lambda out: (out.mkdir(), (out / "econlm_run.json").write_text("{}"),
                                    (out / "metrics.json").write_text("{}"), (out / "checkpoints").mkdir()), False),
}


@pytest.mark.parametrize("state", list(OUT_STATES))
def test_only_a_directory_econlm_wrote_is_replaced(state, tmp_path):
    from econlm.errors import UserError
    from econlm.io import OUTPUT_MARKER, atomic_dir

    make, replaced = OUT_STATES[state]
    out = tmp_path / "out"
    make(out)
    before = {str(p.relative_to(tmp_path)): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    if replaced:
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
        assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "new.txt"]
    else:
        with pytest.raises(UserError, match=f"^{out}: (not replaced|is a file|is a training run)"):
            with atomic_dir(out) as tmp:
                (tmp / "new.txt").write_text("new")
        assert {str(p.relative_to(tmp_path)): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")} == before

if __name__ == "__main__":
    _writer(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
