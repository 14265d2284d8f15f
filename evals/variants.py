"""Variants: what is being compared. A variant is a pipeline plus settings overrides.

Three ways to name one on the command line (``--variant``):

- ``cove`` or ``baseline``: the two pipelines with the current settings and prompts;
- a TOML file in ``evals/variants/`` (by name, or a path), for a change worth keeping around::

      name = "cove-k8"
      pipeline = "cove"
      description = "eight sources instead of five"
      [settings.retrieve]
      k = 8

  Prompt versions are compared the same way: point ``answer.prompts_dir`` at another prompts folder.
- inline, ``NAME=PIPELINE,dotted.key=value,...``, e.g. ``cove-k8=cove,retrieve.k=8``.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PIPELINES = ("cove", "baseline")
VARIANTS_DIR = Path(__file__).resolve().parent / "variants"


class VariantError(ValueError):
    """A --variant that cannot be understood."""


@dataclass
class Variant:
    name: str
    pipeline: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def settings_overrides(self) -> dict[str, Any]:
        """Nested overrides for cove.settings.with_overrides, the pipeline included."""
        merged = json.loads(json.dumps(self.overrides))
        merged.setdefault("answer", {})["pipeline"] = self.pipeline
        return merged


def parse_variant(spec: str, variants_dir: Path = VARIANTS_DIR) -> Variant:
    spec = spec.strip()
    if "=" in spec:
        return _inline(spec)
    path = Path(spec) if spec.endswith(".toml") else variants_dir / f"{spec}.toml"
    if path.is_file():
        return _from_toml(path)
    if spec in PIPELINES:
        return Variant(spec, spec, description=f"the {spec} pipeline with the current settings")
    known = sorted(p.stem for p in variants_dir.glob("*.toml")) if variants_dir.is_dir() else []
    raise VariantError(
        f"unknown variant {spec!r}: use {' or '.join(PIPELINES)}, a TOML file"
        + (f" (here: {', '.join(known)})" if known else "")
        + ", or NAME=PIPELINE,key=value"
    )


def _check_pipeline(name: str, pipeline: str) -> None:
    if pipeline not in PIPELINES:
        raise VariantError(f"variant {name!r}: pipeline must be one of {PIPELINES}, not {pipeline!r}")


def _from_toml(path: Path) -> Variant:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise VariantError(f"{path}: {err}") from err
    name = data.get("name", path.stem)
    pipeline = data.get("pipeline", "cove")
    _check_pipeline(name, pipeline)
    return Variant(name, pipeline, data.get("settings", {}), data.get("description", ""))


def _inline(spec: str) -> Variant:
    head, *assignments = spec.split(",")
    name, pipeline = (part.strip() for part in head.split("=", 1))
    _check_pipeline(name, pipeline)
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        if "=" not in assignment:
            raise VariantError(f"variant {name!r}: expected key=value, got {assignment!r}")
        key, raw = (part.strip() for part in assignment.split("=", 1))
        *parents, leaf = key.split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _value(raw)
    return Variant(name, pipeline, overrides, f"inline: {spec}")


def _value(raw: str) -> Any:
    """'8' -> 8, '0.4' -> 0.4, 'true' -> True, anything else stays text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def unique_names(variants: list[Variant]) -> None:
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VariantError(f"variant names must differ: {', '.join(duplicates)}")
