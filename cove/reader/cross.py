"""The trained reader: a cross-encoder fine-tuned from the bundled MiniLM, read from package data.

A cross-encoder reads the question and a candidate sentence *together* (one BERT pass over
"[CLS] question [SEP] sentence || paper [SEP]"), so it can learn what similarity and term overlap
cannot: whether the sentence states the asked property of the thing, or only mentions the thing.

Stored as int8: every weight matrix is kept as int8 with one float scale per row (symmetric
quantisation), biases and norms as float16, and dequantised to float32 when loaded. That is a
quarter of the float32 size, and training records how closely the int8 reader agrees with the
float32 one (`manifest.json`: `int8_agreement`). The tokenizer is the bundled MiniLM's own (the
reader was fine-tuned from it), so only the weights and the config ship.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from pathlib import Path

import numpy as np

PACKAGED = Path(__file__).resolve().parent.parent / "reader_model"
WEIGHTS, CONFIG, MANIFEST = "weights.int8.npz", "config.json", "manifest.json"
MAX_TOKENS = 160  # question + sentence + its paper's title: longer inputs are cut from the sentence's end


def bf16_available() -> bool:
    """Does this CPU run bfloat16 matrix products natively (AVX-512 BF16)? There the reader reads in
    bfloat16 (1.6x faster, the same best candidate for 0.95 of parts) and trains under bfloat16
    autocast (2x faster); elsewhere bfloat16 would be emulated and slower, so it stays float32."""
    from cove.cpu import AVX512_BASE, XSTATE_AVX512, read_machine

    machine = read_machine(probe=False)  # the flags say what the CPU has; the xstate what the OS enables
    wanted = {*AVX512_BASE, "avx512_bf16"}
    return wanted <= machine.flags and machine.os_grants(XSTATE_AVX512)


class ReaderMissing(RuntimeError):
    """No trained reader at the given place (train one: `cove reader train`)."""


def quantize(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A state dict as int8 matrices with per-row scales (`name::q`, `name::s`) and float16 rest."""
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        value = np.asarray(value, dtype=np.float32)
        if value.ndim == 2 and value.size >= 4096:
            scale = np.abs(value).max(axis=1, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            out[f"{name}::q"] = np.round(value / scale).astype(np.int8)
            out[f"{name}::s"] = scale.astype(np.float32)
        else:
            out[f"{name}::f"] = value.astype(np.float16)
    return out


def dequantize(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float32 state dict back from `quantize`'s arrays."""
    state: dict[str, np.ndarray] = {}
    for key in stored:
        name, _, kind = key.rpartition("::")
        if kind == "q":
            state[name] = stored[key].astype(np.float32) * stored[f"{name}::s"]
        elif kind == "f":
            state[name] = stored[key].astype(np.float32)
    return state


def read_manifest(folder: Path = PACKAGED) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise ReaderMissing(f"no trained reader in {folder} (train one with `cove reader train`)")
    return json.loads(path.read_text())


class CrossReader:
    """Scores (question, candidate text) pairs with the trained cross-encoder; thread-safe."""

    name = "cross-encoder"

    def __init__(self, folder: Path | str = PACKAGED, threads: int = 0) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.threads = threads
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from cove.embed import resolve_model_path
        from cove.settings import BUNDLED_EMBED_MODEL

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if self.threads:
            torch.set_num_threads(self.threads)
        config = AutoConfig.from_pretrained(str(self.folder / CONFIG))
        model = AutoModelForSequenceClassification.from_config(config)
        with np.load(self.folder / WEIGHTS) as stored:
            state = dequantize({k: stored[k] for k in stored.files})
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        model.eval()
        if bf16_available():
            model = model.to(torch.bfloat16)
        self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(BUNDLED_EMBED_MODEL))
        self._model = model

    def logits(self, question: str, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """One logit per text: how strongly the reader thinks it states what `question` asks."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            out = []
            with torch.inference_mode():
                for start in range(0, len(texts), batch_size):
                    batch = texts[start : start + batch_size]
                    encoded = self._tokenizer([question] * len(batch), batch, padding=True, truncation="only_second",
                                              max_length=MAX_TOKENS, return_tensors="pt")  # fmt: skip
                    out.append(self._model(**encoded).logits[:, 0].float().numpy())
        return np.concatenate(out)


@functools.cache
def packaged_reader() -> CrossReader:
    """The reader shipped with Cove (one per process)."""
    return CrossReader(PACKAGED)
