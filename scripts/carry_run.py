"""Carry a training run in progress through git (carry/README.md): save it into carry/NAME, small
enough to commit, and restore it into a run directory on another machine.

`save` keeps the run directory's own files (config, log, best adapter) and only its newest
checkpoint, without that checkpoint's optimizer state; `econlm train --resume` continues it with
fresh Adam moments. Files over PART_BYTES (a 0.5B model's fp32 LoRA weights are 35 MB) are split
into NAME.part-00, .part-01, ... so that no tracked file exceeds it; `restore` joins them back,
byte for byte. The copy is built beside its target and renamed into place: an interrupted save
or restore never leaves a half-copied run there.

    python scripts/carry_run.py save /work/runs/qwen05/run qwen05
    python scripts/carry_run.py restore qwen05 /work/runs/qwen05/run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from econlm.training.checkpoint import CHECKPOINTS, OPTIMIZER_FILE, checkpoint_dirs

CARRY_ROOT = Path(__file__).resolve().parent.parent / "carry"
PART_BYTES = 25 * 2**20
PART = ".part-"


def _split_large_files(folder: Path, part_bytes: int) -> None:
    for path in [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > part_bytes]:
        with path.open("rb") as whole:
            for index, chunk in enumerate(iter(lambda: whole.read(part_bytes), b"")):
                path.with_name(f"{path.name}{PART}{index:02d}").write_bytes(chunk)
        path.unlink()


def _join_parts(folder: Path) -> None:
    for first in sorted(folder.rglob(f"*{PART}00")):
        name = first.name[: -len(f"{PART}00")]
        parts = sorted(first.parent.glob(f"{name}{PART}[0-9][0-9]"))
        with (first.parent / name).open("wb") as whole:
            for part in parts:
                whole.write(part.read_bytes())
                part.unlink()


def _replace(target: Path, built: Path, staging: Path) -> None:
    """Rename `built` to `target`, moving an existing `target` into `staging` (then removed)."""
    if target.exists():
        target.rename(staging / "previous")
    built.rename(target)
    shutil.rmtree(staging)


def save(run_dir: Path, name: str, part_bytes: int = PART_BYTES, root: Path = CARRY_ROOT) -> Path:
    checkpoints = checkpoint_dirs(run_dir)
    if not checkpoints:
        sys.exit(f"{run_dir}: no complete checkpoint to carry")
    step, newest = checkpoints[-1]
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    copy = staging / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(CHECKPOINTS, ".*"))
    shutil.copytree(newest, copy / CHECKPOINTS / newest.name, ignore=shutil.ignore_patterns(OPTIMIZER_FILE))
    _split_large_files(copy, part_bytes)
    _replace(root / name, copy, staging)
    print(f"carried {run_dir} at step {step} into {root / name}")
    return root / name


def restore(name: str, run_dir: Path, root: Path = CARRY_ROOT) -> Path:
    source = root / name
    if not source.is_dir():
        sys.exit(f"{source}: no carried run of that name")
    if run_dir.exists():
        sys.exit(f"{run_dir}: already exists; restore into a new run directory")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    copy = staging / "run"
    shutil.copytree(source, copy)
    _join_parts(copy)
    _replace(run_dir, copy, staging)
    print(f"restored {source} into {run_dir}; continue it with: econlm train --resume {run_dir}")
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    save_command = commands.add_parser("save", help="RUN_DIR -> carry/NAME")
    save_command.add_argument("run_dir", type=Path)
    save_command.add_argument("name", help="folder under carry/")
    restore_command = commands.add_parser("restore", help="carry/NAME -> RUN_DIR")
    restore_command.add_argument("name", help="folder under carry/")
    restore_command.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    if args.command == "save":
        save(args.run_dir, args.name)
    else:
        restore(args.name, args.run_dir)


if __name__ == "__main__":
    main()
