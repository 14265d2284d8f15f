"""Prompt templates as versioned data: load `prompts/<id>.toml`, check its variables, render messages.

A template file has `id`, `version`, `notes` and one or more message parts (`system`, `user`) with
`{placeholders}`. `load_prompts` checks each part uses exactly the variables the engine supplies, so
a renamed or misspelt placeholder fails at load time, not as a quietly worse answer. Every answer
records the versions of the templates that produced it (`PromptSet.versions`).
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

DEFAULT_PACKAGE = "prompts"  # the templates ship as package data of the top-level `prompts` package

# The variables the answer engine passes to each message part of each template.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "answer": {"system": {"sources"}, "user": {"history", "question"}},
    "plan": {"user": {"max_questions"}},
    "verify": {"system": {"evidence"}, "user": {"question"}},
    "question": {"system": set(), "user": {"sentence"}},
}
# Strings the engine looks for in a model's reply, declared next to the prompt that asks for them.
MARKERS: dict[str, set[str]] = {"answer": {"not_stated"}, "verify": {"not_stated"}}


class PromptError(ValueError):
    """A template file is missing, malformed, or uses the wrong variables."""


@dataclass(frozen=True)
class Prompt:
    id: str
    version: int
    notes: str
    parts: dict[str, str]
    markers: dict[str, str] = field(default_factory=dict)
    examples: tuple[dict[str, str], ...] = ()  # worked examples a few-shot prompt shows (its `[[examples]]`)

    def render(self, part: str, **values: object) -> str:
        return self.parts[part].format(**values)

    def marker(self, name: str) -> str:
        """A reply string the engine parses (e.g. "Not stated."), as the template declares it."""
        return self.markers[name]


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def load_prompt(path: Path | Traversable, expected: dict[str, set[str]], markers: set[str] = frozenset()) -> Prompt:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise PromptError(f"cannot read prompt {path}: {err}") from err
    for key in ("id", "version"):
        if key not in data:
            raise PromptError(f"{path}: missing '{key}'")
    parts = {}
    for part, wanted in expected.items():
        if part not in data:
            raise PromptError(f"{path}: missing the '{part}' message")
        found = placeholders(data[part])
        if found != wanted:
            raise PromptError(
                f"{path}: '{part}' uses variables {sorted(found)} but the engine supplies {sorted(wanted)}"
            )
        parts[part] = data[part]
    missing = sorted(m for m in markers if not isinstance(data.get(m), str))
    if missing:
        raise PromptError(f"{path}: missing the reply marker(s) {', '.join(missing)} the engine parses")
    found = {m: data[m] for m in markers}
    examples = data.get("examples", [])
    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        raise PromptError(f"{path}: 'examples' must be a list of tables")
    shown = tuple({str(k): str(v) for k, v in e.items()} for e in examples)
    return Prompt(str(data["id"]), int(data["version"]), str(data.get("notes", "")), parts, found, shown)


@dataclass(frozen=True)
class PromptSet:
    prompts: dict[str, Prompt]

    def __getitem__(self, prompt_id: str) -> Prompt:
        return self.prompts[prompt_id]

    def versions(self, ids: list[str] | None = None) -> dict[str, int]:
        return {i: self.prompts[i].version for i in (ids or self.prompts)}


def load_prompt_file(prompt_id: str, directory: Path | None = None) -> Prompt:
    """One template by id, from `directory` (default: the templates shipped with Cove)."""
    directory = Path(directory) if directory else resources.files(DEFAULT_PACKAGE)
    prompt = load_prompt(directory / f"{prompt_id}.toml", EXPECTED[prompt_id], MARKERS.get(prompt_id, set()))
    if prompt.id != prompt_id:
        raise PromptError(f"{directory / (prompt_id + '.toml')}: id is '{prompt.id}', expected '{prompt_id}'")
    return prompt


def load_prompts(directory: Path | None = None) -> PromptSet:
    """All templates the engine needs, from `directory` (default: the templates shipped with Cove)."""
    return PromptSet({prompt_id: load_prompt_file(prompt_id, directory) for prompt_id in EXPECTED})
