"""econlm: adapt open language models to economics research.

Stages (one module each): data (harvest, corpus, task datasets) -> train (LoRA/QLoRA SFT)
-> evaluate / baselines / report -> rag + app (serving with citations).
"""

__version__ = "0.1.0"
