"""Copy a training run in progress into carry/NAME, small enough to commit (carry/README.md).

Keeps the run directory's own files (config, log, best adapter) and only its newest checkpoint,
without that checkpoint's optimizer state; `econlm train --resume` continues it with fresh Adam
moments. The copy is built beside carry/NAME and renamed into place: an interrupted carry never
leaves a half-copied run there.

    python scripts/carry_run.py /work/runs/qwen05/run qwen05
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from econlm.training.checkpoint import CHECKPOINTS, OPTIMIZER_FILE, checkpoint_dirs

CARRY_ROOT = Path(__file__).resolve().parent.parent / "carry"


def carry(run_dir: Path, name: str) -> Path:
    checkpoints = checkpoint_dirs(run_dir)
    if not checkpoints:
        sys.exit(f"{run_dir}: no complete checkpoint to carry")
    step, newest = checkpoints[-1]
    target = CARRY_ROOT / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=CARRY_ROOT))
    copy = staging / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(CHECKPOINTS, ".*"))
    shutil.copytree(newest, copy / CHECKPOINTS / newest.name, ignore=shutil.ignore_patterns(OPTIMIZER_FILE))
    previous = staging / "previous"
    if target.exists():
        target.rename(previous)
    copy.rename(target)
    shutil.rmtree(staging)
    print(f"carried {run_dir} at step {step} into {target}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name", help="folder under carry/")
    args = parser.parse_args()
    carry(args.run_dir, args.name)


if __name__ == "__main__":
    main()
