"""Validated configuration for `econlm train`, loaded from the YAML presets shipped in `econlm/presets/`
(`configs/` in a checkout) or from any YAML file.

Every field is declared (and documented) here; unknown keys are errors, so a typo such as
`train.learning_rte` fails at load time instead of silently training with the default (the
practice of peft's `LoraConfig` and paper-qa's `Settings`). Presets are plain YAML files whose
header comment holds their launch command; `--set section.key=value` overrides any field, the
value parsed as YAML (`--set train.max_steps=10`, `--set data.tasks.title=0.5`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from econlm.errors import UserError
from econlm.paths import package_data
from econlm.types import TASKS

PRESETS_DIR = package_data("presets")
DEFAULT_PRESET = "cpu-smollm2-lora"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RandomLlama(_Section):
    """Shape of a randomly initialised LLaMA (the `debug` preset: trains end to end in seconds)."""

    num_hidden_layers: int = Field(2, ge=1, description="Decoder layers.")
    hidden_size: int = Field(64, ge=8, description="Model width.")
    intermediate_size: int = Field(128, ge=8, description="MLP width.")
    num_attention_heads: int = Field(4, ge=1, description="Query heads.")
    num_key_value_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention).")


class ModelConfig(_Section):
    base: str = Field(
        "smollm2-135m-instruct",
        description="Base model: packaged name, local HF folder, .gguf file or hub id (see `econlm models list`). "
        "With `random_init`, only its tokenizer (and chat template) is used.",
    )
    random_init: RandomLlama | None = Field(
        None, description="Build a randomly initialised LlamaForCausalLM of this shape instead of loading weights; "
        "it is saved as RUN_DIR/base/ so the run directory stays loadable."
    )
    quantization: Literal["nf4"] | None = Field(
        None, description="nf4: load the base 4-bit NF4 with double quantisation (QLoRA); needs CUDA and `econlm[gpu]`."
    )
    precision: Literal["auto", "fp32", "bf16-autocast"] = Field(
        "auto",
        description="auto: bf16 autocast where the hardware computes bf16 natively (CUDA bf16, CPUs with "
        "AVX512-BF16/AMX), else fp32. Weights and LoRA parameters stay fp32 (or 4-bit) either way.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (saves memory, costs ~30% time).")
    init_adapter: Path | None = Field(
        None, description="LoRA adapter folder (a run directory or a shipped adapter) whose weights start training "
        "instead of a fresh LoRA: a second stage continues the first. Its base must be model.base and its rank, "
        "scale and adapted modules those of lora:; the run records its path and sha256.",
    )

    @model_validator(mode="after")
    def _init_adapter_needs_its_base(self) -> "ModelConfig":
        if self.init_adapter is not None and self.random_init is not None:
            raise ValueError("model.init_adapter continues an adapter on the base it was trained on: give that base "
                             "as model.base, without model.random_init")
        return self


class LoraSettings(_Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' (every linear layer but the output head) or a list of module names."
    )

    def peft_config(self):
        """peft's `LoraConfig` of these settings: what every run builds its adapters from."""
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.target_modules,
                          task_type="CAUSAL_LM")


class DataConfig(_Section):
    corpus: Path | None = Field(None, description="Corpus directory (train/validation/test.jsonl); default --corpus or $ECONLM_DATA.")
    tasks: dict[str, float] = Field(
        default_factory=lambda: {"title": 1.0, "classify": 1.0},
        description="Task -> weight. A weight scales how many of that task's training examples one epoch draws: "
        "1.0 = each once, 0.5 = a seeded half, 2.0 = each twice.",
    )
    qa_file: Path | None = Field(None, description="Question-answer pairs JSONL (needed for task qa; see `econlm qa synthesize`).")
    max_length: int = Field(512, ge=32, description="Longest training sequence in tokens; longer examples lose the end of "
                            "their first user message (the abstract or question), never the answer.")
    max_train_examples_per_task: int | None = Field(None, ge=1, description="Use only the first N (seeded order) train examples of each task.")
    val_examples_per_task: int = Field(64, ge=1, description="Fixed validation subset per task (the first N in corpus order), for cheap, comparable val loss.")
    sequences: Literal["per-task", "classify-then-title"] = Field(
        "per-task", description="per-task: one sequence per example. classify-then-title: one sequence per paper, "
        "the category turn then the title turn (two answers, the abstract encoded once: about half the tokens); "
        "needs tasks title and classify with the same weight, which then counts papers.",
    )

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: dict[str, float]) -> dict[str, float]:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}: choose from {', '.join(TASKS)}")
        if not tasks or any(w <= 0 for w in tasks.values()):
            raise ValueError("give at least one task, each with a weight > 0")
        return tasks

    @model_validator(mode="after")
    def _qa_needs_file(self) -> "DataConfig":
        if "qa" in self.tasks and self.qa_file is None:
            raise ValueError("task qa needs data.qa_file (question-answer pairs JSONL)")
        return self

    @model_validator(mode="after")
    def _joint_needs_both_tasks(self) -> "DataConfig":
        if self.sequences == "classify-then-title" and (
                {"title", "classify"} - set(self.tasks) or self.tasks["title"] != self.tasks["classify"]):
            raise ValueError("sequences classify-then-title needs tasks title and classify, with the same weight")
        return self


class TrainSettings(_Section):
    seed: int = Field(0, description="Seeds LoRA init, dropout and the per-epoch example order.")
    epochs: float = Field(1.0, gt=0, description="Passes over the weighted training mix (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(16, ge=1, description="Examples per optimizer step, over all devices.")
    micro_batch_tokens: int = Field(
        4096, ge=64, description="Token budget of one forward pass (padded or packed tokens). The examples of a step "
        "are split into as many micro-batches as this needs, and their gradients accumulated.",
    )
    batching: Literal["grouped", "packed"] = Field(
        "grouped", description="grouped: each micro-batch holds examples of similar length, right-padded. packed: "
        "examples concatenated into one row without padding; position ids restart at 0 per example, so attention "
        "never crosses examples (pays off with kernels that skip masked blocks, e.g. flash-attention on GPU).",
    )
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (after warm-up).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the LoRA parameters.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the steps with a linear warm-up; cosine decay to 0 after.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm (null: no clipping).")
    optimizer: Literal["adamw", "paged_adamw_32bit", "paged_adamw_8bit"] = Field(
        "adamw", description="paged_* come from bitsandbytes (CUDA, `econlm[gpu]`): optimizer state paged to CPU under memory pressure."
    )
    loss_average: Literal["token", "task", "answer"] = Field(
        "token", description="How a step's answer-token losses are averaged. token: all tokens alike (titles, ~15 "
        "tokens, outweigh one-token labels). task: each task's mean token loss, then their mean weighted by "
        "task_loss_weights. answer: each answer's mean token loss counts the same (per-example averaging).",
    )
    task_loss_weights: dict[str, float] | None = Field(
        None, description="Task -> weight of its mean loss under loss_average=task (default 1 each).")
    eval_every: int = Field(100, ge=1, description="Validation loss every N steps (and at the end); the best adapter is kept.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop once this many evaluations in a row did not lower the mean validation loss (weighted by "
        "task_loss_weights); "
        "the best adapter is the run's (null: train all steps).",
    )
    checkpoint_every: int = Field(100, ge=1, description="Write a resumable checkpoint every N steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Keep the last K checkpoints.")
    log_every: int = Field(1, ge=1, description="Write a train_log.jsonl row every N steps.")


class TrainConfig(_Section):
    """Everything `econlm train` needs; saved resolved into every run directory."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainSettings = Field(default_factory=TrainSettings)

    @model_validator(mode="after")
    def _loss_weights_name_trained_tasks(self) -> "TrainConfig":
        weights = self.train.task_loss_weights
        if weights is None:
            return self
        if self.train.loss_average != "task":
            raise ValueError("train.task_loss_weights needs train.loss_average=task")
        unknown = [t for t in weights if t not in self.data.tasks]
        if unknown or any(w <= 0 for w in weights.values()):
            raise ValueError(f"train.task_loss_weights: give trained tasks ({', '.join(self.data.tasks)}) weights > 0")
        return self

    @model_validator(mode="after")
    def _one_example_fits_a_micro_batch(self) -> "TrainConfig":
        if self.train.micro_batch_tokens < self.data.max_length:
            raise ValueError(
                f"train.micro_batch_tokens ({self.train.micro_batch_tokens}) must be >= data.max_length ({self.data.max_length})"
            )
        return self


def preset_path(name_or_path: str | Path) -> Path:
    """A shipped preset's name (`debug`) or a YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"{path}: no such config file")
        return path
    candidate = PRESETS_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise UserError(f"unknown preset {name_or_path!r} (known: {known}; or give a .yaml path)")
    return candidate


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.max_steps=10")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {assignment!r}: '{part}' is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def validate_config(tree: dict[str, Any], source: str) -> TrainConfig:
    """Validate a config tree; the error names `source` (the YAML file) and the first bad field."""
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise UserError(f"{source}: field '{field}': {message}{more}") from None


_PATH_FIELDS = (("data", "corpus"), ("data", "qa_file"), ("model", "init_adapter"))


def _paths_relative_to(tree: dict[str, Any], base: Path) -> None:
    """Relative paths written in a YAML file point from that file, so a preset works from any directory
    (paths given with `--set` stay relative to the working directory, like any command-line path)."""
    for section_name, key in _PATH_FIELDS:
        section = tree.get(section_name)
        if isinstance(section, dict) and isinstance(section.get(key), str) \
                and not Path(section[key]).expanduser().is_absolute():
            section[key] = str((base / section[key]).resolve())


def load_config(name_or_path: str | Path = DEFAULT_PRESET, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a preset or YAML file, apply `--set` overrides, validate."""
    path = preset_path(name_or_path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', None) or ' '.join(str(exc).split())})") from None
    if tree is None:  # training every default without a word is not what an empty file asks for
        raise UserError(f"{path}: is empty; give the sections to set (model, lora, data, train), e.g. start "
                        f"from a preset (econlm train --config {DEFAULT_PRESET})")
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping of sections (model, lora, data, train)")
    _paths_relative_to(tree, path.parent)
    for assignment in overrides:
        apply_override(tree, assignment)
    source = str(path) + (f" with --set {' '.join(overrides)}" if overrides else "")
    return validate_config(tree, source)
