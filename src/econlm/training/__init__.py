"""Fine-tuning: LoRA / QLoRA SFT on the task mix (`trainer`), its data pipeline (`data`), a start
from an existing adapter (`init_adapter`), crash-safe checkpoints (`checkpoint`), logs and curves
(`report`), and adapter merging (`merge`)."""

from econlm.training.merge import merge_run
from econlm.training.trainer import resume, train

__all__ = ["merge_run", "resume", "train"]
