"""A reader made of the local model: query likelihood, log P(question | sentence) (UPR, Sachan et
al. 2022, "Improving Passage Retrieval with Zero-Shot Question Generation").

A small model writes poor answers but can still say how likely a question is as a continuation of
a passage: a sentence that states the asked thing makes the question's words likely. The score is
the mean log-probability of the question's tokens after "Passage: <sentence> ... Question:",
computed by llama.cpp over the GGUF the chat model runs (the same self-checked file).
"""

from __future__ import annotations

import threading

import numpy as np

PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"


class QueryLikelihoodReader:
    """Scores candidates by the mean log-probability the local model gives the question after them."""

    name = "query-likelihood"

    def __init__(self, model_path: str, n_ctx: int = 512, threads: int = 0) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.threads = threads
        self._llm = None
        self._lock = threading.Lock()

    def _load(self):
        from llama_cpp import Llama

        kwargs = {"n_threads": self.threads} if self.threads else {}
        return Llama(self.model_path, n_ctx=self.n_ctx, logits_all=True, verbose=False, **kwargs)

    def logits(self, question: str, texts: list[str]) -> np.ndarray:
        with self._lock:
            if self._llm is None:
                self._llm = self._load()
            llm = self._llm
            asked = llm.tokenize((" " + question.strip()).encode(), add_bos=False, special=False)
            out = []
            for text in texts:
                prompt = llm.tokenize(PROMPT.format(passage=text).encode(), add_bos=True, special=False)
                room = self.n_ctx - len(asked) - 1
                tokens = prompt[-room:] + asked  # a long passage loses its start, never the question
                llm.reset()
                llm.eval(tokens)
                scores = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
                start = len(tokens) - len(asked)
                rows = scores[start - 1 : len(tokens) - 1]  # the logits that predict each question token
                top = rows.max(axis=1, keepdims=True)
                logp = rows - top - np.log(np.exp(rows - top).sum(axis=1, keepdims=True))
                out.append(float(np.mean(logp[np.arange(len(asked)), asked])))
        return np.asarray(out, dtype=np.float32)
