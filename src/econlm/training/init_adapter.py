"""`model.init_adapter`: a run that starts from an existing LoRA adapter instead of a fresh one.

A second training stage continues the first (docs/training.md, "Two stages"): the shipped title +
classification adapter goes on to the Q&A pairs with a replayed share of its own tasks, instead of
retraining everything from scratch for hours. The adapter is checked against the run before
anything is written or loaded (its base must be the run's `model.base`, its rank, scale and
adapted modules those of `lora:`), its weights replace the fresh LoRA initialisation when the model
is built, and the run records which adapter it started from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from econlm.config import TrainConfig
from econlm.errors import UserError
from econlm.io import sha256_file
from econlm.models import ModelRef

FIELD = "model.init_adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class InitAdapter:
    """The adapter a run starts from, as checked: where it is, its weights' sha256 and its base."""

    path: Path  # resolved folder
    sha256: str  # of ADAPTER_WEIGHTS, as `sha256sum` gives it
    base: ModelRef

    def record(self) -> dict[str, str]:
        """What econlm_run.json and the model card say about it."""
        return {"path": str(self.path), "adapter_sha256": self.sha256, "base_model": self.base.text}


def same_model(a: ModelRef, b: ModelRef) -> bool:
    """The same weights: the same reference, or (a packaged name beside its converted folder, two
    copies of a folder) the same content hash."""
    return a.source == b.source or a.hash == b.hash


def lora_shapes(config: TrainConfig, base: ModelRef) -> dict[str, tuple[int, ...]]:
    """The LoRA weights the run's `lora:` puts on its base, by name and shape, from an empty
    (meta-device) copy of the base: only its config.json is read, no weights. The libraries'
    deprecation warnings are silenced here: a check's noise would precede the one error line."""
    import warnings

    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base.pretrained_source())),
                               config.lora.peft_config())
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}


def resolve(config: TrainConfig, base: ModelRef) -> InitAdapter | None:
    """`model.init_adapter` checked against the run's base model and `lora:` (None when unset),
    before anything is written; every mistake is one line naming the field."""
    from safetensors import safe_open

    folder = config.model.init_adapter
    if folder is None:
        return None
    folder = Path(folder).expanduser()
    if not ((folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_WEIGHTS).is_file()):
        raise UserError(f"{FIELD}: {folder}: not a LoRA adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        adapter = ModelRef.parse(folder.resolve())
    except UserError as exc:
        raise UserError(f"{FIELD}: {exc}") from None
    if not same_model(adapter.base, base):
        raise UserError(f"{FIELD}: {folder} was trained on base {adapter.base.text}, not on this run's model.base "
                        f"{config.model.base}")
    saved = json.loads((folder / ADAPTER_CONFIG).read_text())
    lora = config.lora
    if saved.get("peft_type") != "LORA" or saved.get("r") != lora.r or float(saved.get("lora_alpha") or 0) != lora.alpha:
        raise UserError(f"{FIELD}: {folder} is {saved.get('peft_type')} r={saved.get('r')}, "
                        f"alpha={saved.get('lora_alpha')}; this run's lora: has r={lora.r}, alpha={lora.alpha:g} "
                        "(give lora: the adapter's values)")
    with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as weights:
        theirs = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    ours = lora_shapes(config, base)
    if theirs != ours:
        first = sorted(set(ours) ^ set(theirs)) or [k for k in sorted(ours) if ours[k] != theirs[k]]
        modules = saved.get("target_modules")
        names = sorted({m.rsplit(".", 1)[-1] for m in modules}) if isinstance(modules, list) else [str(modules)]
        raise UserError(f"{FIELD}: {folder}: its LoRA weights do not fit this run's lora: (first difference: "
                        f"{first[0]}); it adapts {', '.join(names)}: give those as lora.target_modules")
    return InitAdapter(folder.resolve(), sha256_file(folder / ADAPTER_WEIGHTS), adapter.base)


def load_into(model, adapter: InitAdapter) -> None:
    """Replace the fresh LoRA weights of `model` (built from the run's `lora:`, checked by `resolve`
    to fit) by the adapter's.

    Not `PeftModel.from_pretrained(base, path, is_trainable=True)`: that builds the LoRA layers from
    the adapter's saved config (its dropout, not `lora.dropout`) and loads weights that do not fit
    with a warning only. Here the model is built as every run builds it, which is also what a
    resumed run loads its checkpoint into.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(adapter.path / ADAPTER_WEIGHTS)))
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{adapter.path}: adapter weights do not fit the model ({result.unexpected_keys[:3]})")
