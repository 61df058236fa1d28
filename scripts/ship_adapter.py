"""Copy a training run's best adapter into a folder econlm ships as a model of its own.

The destination is src/econlm/adapters/NAME/ (models/NAME in a checkout), so the next wheel carries
the adapter and `--model NAME` loads it; NAME defaults to econlm-<base without -instruct> for a
packaged base (econlm-smollm2-135m, econlm-qwen2.5-coder-0.5b), else --dest's folder name. The model
card names the preset the run record gives; --preset names it for a run recorded before runs
recorded their preset.

Usage: .venv/bin/python scripts/ship_adapter.py RUN_DIR [--preset NAME] [--name NAME] [--dest DIR]
                                                 [--weights-dtype float32|bfloat16|float16]

Copies the run's self-description (adapter safetensors, config, tokenizer, chat template,
econlm_run.json, metrics.json, train_log.jsonl, train_curve.png) without checkpoints/ (optimizer
state stays out of git), and writes a README.md model card saying how far training got. The copy
is made in a temp folder beside the destination and renamed into place. --weights-dtype stores the
LoRA weights in half precision (a 0.5B model's fp32 adapter is 35 MB, over what the repository
tracks); peft loads them into the float32 LoRA layers as it would float32 ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from econlm.config import load_config
from econlm.io import atomic_dir
from econlm.paths import package_data
from econlm.training.init_adapter import ADAPTER_WEIGHTS
from econlm.models import DEFAULT_SHIPPED_ADAPTER, REGISTRY, SHIPPED_ADAPTER_NAME, SHIPPED_ADAPTERS_ROOT

SHIPPED_FILES = ("adapter_config.json", ADAPTER_WEIGHTS, "chat_template.jinja", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "econlm_run.json", "metrics.json",
                 "train_log.jsonl", "train_curve.png")


def median_tokens_per_s(run_dir: Path) -> float:
    """Typical speed: the run's mean tokens/s also counts steps slowed by other jobs or a pause."""
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return statistics.median(row["tokens_per_s"] for row in rows if "tokens_per_s" in row)


def default_name(run: dict) -> str:
    base = run["base_model"]
    if base not in REGISTRY:
        raise SystemExit(f"the run's base {base!r} is not a packaged model: name the adapter with --name")
    return "econlm-" + base.removesuffix("-instruct")


def base_display_name(run: dict) -> str:
    """The base as its authors spell it (the hub id's last part) for a packaged base."""
    base = run["base_model"]
    return REGISTRY[base].hub_id.split("/")[-1] if base in REGISTRY else base


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {prefix + key: value})
    return out


def _same_packaged_file(ran: object, wanted: object) -> bool:
    """Whether a run's path names the file its preset names inside the package, in whatever checkout
    the run came from (a preset's paths resolve from the preset file: /a/src/econlm/datasets/x in
    one tree, /b/src/econlm/datasets/x in another)."""
    if not (isinstance(ran, str) and isinstance(wanted, str)):
        return False
    try:
        inside = Path(wanted).relative_to(package_data(""))
    except ValueError:
        return False
    return Path(ran).parts[-len(inside.parts) - 1:] == ("econlm", *inside.parts)


def changed_from_preset(preset: str, config: dict) -> list[str]:
    """The run's fields set away from its preset (`--set`), so that the card says what ran; the corpus,
    which a run resolves from --corpus and records by hash, is not a change."""
    wanted = _flat(load_config(preset).model_dump(mode="json"))
    ran = _flat(config)
    return [f"{key}={json.dumps(ran[key])}" for key in sorted(ran)
            if key != "data.corpus" and ran[key] != wanted.get(key) and not _same_packaged_file(ran[key], wanted.get(key))]


def write_weights(source: Path, dest: Path, dtype: str) -> None:
    """The adapter's safetensors as trained (float32), or its floating tensors cast to `dtype`."""
    if dtype == "float32":
        shutil.copy2(source, dest)
        return
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as weights:
        metadata = weights.metadata()
        tensors = {key: weights.get_tensor(key) for key in weights.keys()}
    cast = {key: t.to(getattr(torch, dtype)) if t.is_floating_point() else t for key, t in tensors.items()}
    save_file(cast, str(dest), metadata=metadata)


def model_card(name: str, preset: str, run: dict, metrics: dict, typical_tokens_per_s: float,
               weights_dtype: str = "float32") -> str:
    config = run["config"]
    changed = changed_from_preset(preset, config)
    with_changes = f" with {', '.join(f'`{c}`' for c in changed)}" if changed else ""
    targets = config["lora"]["target_modules"]
    layers = "all linear layers" if targets == "all-linear" else "layers " + ", ".join(targets)
    tasks = ", ".join(f"{task} x{weight:g}" for task, weight in config["data"]["tasks"].items())
    done = metrics["steps_done"] / metrics["total_steps"]
    state = (f"finished: {metrics['steps_done']} steps, {metrics['epochs_done']:g} epoch(s) of the mix" if metrics.get("finished")
             else f"**partial**: {metrics['steps_done']} of {metrics['total_steps']} steps ({done:.0%} of the epoch); "
                  "training continues with `econlm train --resume` and this folder is replaced when it is done")
    losses = ", ".join(f"{task} {loss:.3f}" for task, loss in metrics["best_val_loss"].items())
    parent = run.get("init_adapter")  # a second stage: the adapter its training started from
    start = (f"\n- Started from the adapter `{parent['path']}` (adapter_model.safetensors sha256 `{parent['adapter_sha256']}`),"
             " not a fresh LoRA." if parent else "")
    loading = (f"`econlm eval --model {SHIPPED_ADAPTER_NAME} ...`, `econlm app` and `econlm reproduce` load this folder by default."
               if name == DEFAULT_SHIPPED_ADAPTER else
               f"`econlm eval --model {name} ...` loads this folder (the default `{SHIPPED_ADAPTER_NAME}` is {DEFAULT_SHIPPED_ADAPTER}).")
    stored = ("" if weights_dtype == "float32" else
              f"\n- Weights stored in {weights_dtype} (trained in float32); they load into float32 LoRA layers.")
    return f"""# {name}

LoRA adapter (r={config['lora']['r']}, alpha={config['lora']['alpha']}, {layers}) for
{base_display_name(run)} (base model sha256 `{run['base_model_hash']}`), trained by econlm with the
`{preset}` preset{with_changes} on the arXiv economics train split: tasks {tasks}
(templates {', '.join(dict.fromkeys(run['templates'].values()))}).

- Training state: {state}.{start}{stored}
- Chosen checkpoint: step {metrics['best_step']} (lowest mean validation loss {metrics['best_val_loss_mean']:.4f};
  per task: {losses}).
- Training time{'' if metrics.get('finished') else ' so far'}: {metrics['train_seconds'] / 3600:.2f} h of steps on a 2-core CPU, {metrics['tokens_per_s']} tokens/s
  on average ({metrics['train_tokens']:,} non-padding tokens); the median step ran at
  {typical_tokens_per_s:.0f} tokens/s (the average includes steps slowed by other jobs sharing the CPU).

{loading}
`econlm_run.json` holds the resolved config, dataset and base-model hashes and library versions;
`train_log.jsonl` and `train_curve.png` the training curve. No optimizer state is shipped.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--preset", help="the preset the run was trained with [default: econlm_run.json's preset]")
    parser.add_argument("--name", help="the shipped model's name [default: --dest's folder name, else econlm-<packaged base>]")
    parser.add_argument("--dest", type=Path, help="the folder to write [default: the package's adapters/NAME]")
    parser.add_argument("--weights-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="the stored adapter weights' precision [default: float32, as trained]")
    args = parser.parse_args()
    run = json.loads((args.run_dir / "econlm_run.json").read_text())
    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    preset = args.preset or run.get("preset")
    if not preset:
        parser.error(f"{args.run_dir / 'econlm_run.json'} names no preset: give --preset NAME")
    name = args.name or (args.dest.name if args.dest else default_name(run))
    dest = args.dest or SHIPPED_ADAPTERS_ROOT / name
    with atomic_dir(dest) as tmp:
        for file_name in SHIPPED_FILES:
            if file_name == ADAPTER_WEIGHTS:
                write_weights(args.run_dir / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS, args.weights_dtype)
            elif (args.run_dir / file_name).is_file():
                shutil.copy2(args.run_dir / file_name, tmp / file_name)
        card = model_card(name, preset, run, metrics, median_tokens_per_s(args.run_dir), args.weights_dtype)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    print(f"shipped {args.run_dir} -> {dest}")


if __name__ == "__main__":
    main()
