"""The reader at answer time: rerank a part's candidates and decide, with a calibrated probability,
whether the best one states what the part asks.

    reader = CalibratedReader.from_settings(settings.reader)
    ranked = reader.rerank(part.text, scored, pool)   # best first; each Scored has .reader set
    reader.answers(ranked[0])                         # probability >= the fitted threshold

The ranking score is the quote scorer's score plus `reader_weight` times the reader's logit, and
its probability is Platt scaling of that score, `sigmoid(a * score + b)`. The weight, `a`, `b` and
the threshold are fitted on the dev set's calibration fold (items the reader was not trained on:
`evals/reader.py`) and recorded in the reader's manifest, with whether the reader abstains better
than the quote scorer's own gate there (`gates`); where it does not, the gate keeps deciding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cove.reader.pairs import reader_text

if TYPE_CHECKING:
    from cove.quotes import Pool, Scored
    from cove.settings import ReaderSettings


@dataclass
class Calibration:
    a: float = 1.0
    b: float = 0.0
    threshold: float = 0.5
    reader_weight: float = 1.0  # the reader's logit beside the quote scorer's score
    gates: bool = True  # the calibrated probability decides whether a part is answered

    def probability(self, logit: float) -> float:
        z = max(-50.0, min(50.0, self.a * logit + self.b))
        return 1.0 / (1.0 + math.exp(-z))


class CalibratedReader:
    """A reader (anything with `logits(question, texts)`) with its calibration."""

    def __init__(self, model, calibration: Calibration, candidates: int = 16) -> None:
        self.model = model
        self.calibration = calibration
        self.candidates = candidates

    @classmethod
    def from_settings(cls, settings: ReaderSettings) -> CalibratedReader | None:
        """The configured reader, or None when it is off."""
        if settings.kind == "off":
            return None
        from cove.reader.cross import PACKAGED, CrossReader

        model = CrossReader(settings.path or PACKAGED, settings.threads)
        fitted = model.manifest.get("calibration") or {}
        weight = (model.manifest.get("combination") or {}).get("reader_weight", 1.0)
        calibration = Calibration(float(fitted.get("a", 1.0)), float(fitted.get("b", 0.0)),
                                  float(fitted.get("threshold", 0.5)), float(weight),
                                  bool(fitted.get("gates", True)))  # fmt: skip
        if settings.threshold is not None:  # a threshold set by the user: the reader gates
            calibration.threshold, calibration.gates = settings.threshold, True
        return cls(model, calibration, settings.candidates)

    def rerank(self, question: str, scored: list[Scored], pool: Pool) -> list[Scored]:
        """`scored` (the quote scorer's order) reordered by the combined score; each gets the reader's
        logit as its `reader` feature and, where the reader gates, `.reader` (the probability)."""
        texts = [reader_text(s.candidate.text, pool.evidence[s.candidate.n].header) for s in scored]
        calibration = self.calibration
        combined = {}
        for s, logit in zip(scored, self.model.logits(question, texts), strict=True):
            s.features["reader"] = float(logit)
            combined[id(s)] = s.score + calibration.reader_weight * float(logit)
            if calibration.gates:
                s.reader = calibration.probability(combined[id(s)])
        return sorted(scored, key=lambda s: combined[id(s)], reverse=True)

    @property
    def gates(self) -> bool:
        return self.calibration.gates

    def answers(self, scored: Scored, threshold: float | None = None) -> bool:
        cut = self.calibration.threshold if threshold is None else threshold
        return scored.reader is not None and scored.reader >= cut
