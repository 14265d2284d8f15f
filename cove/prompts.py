"""Prompt templates as versioned data: load `prompts/<id>.toml`, check its variables, render messages.

A template file has `id`, `version`, `notes` and one or more message parts (`system`, `user`) with
`{placeholders}`. `load_prompts` checks each part uses exactly the variables the engine supplies, so
a renamed or misspelt placeholder fails at load time, not as a quietly worse answer. Every answer
records the versions of the templates that produced it (`PromptSet.versions`).
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "prompts"

# The variables the answer engine passes to each message part of each template.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "answer": {"system": {"sources"}, "user": {"history", "question"}},
    "plan": {"user": {"max_questions"}},
    "verify": {"system": {"evidence"}, "user": {"question"}},
    "revise": {"user": {"verifications"}},
}


class PromptError(ValueError):
    """A template file is missing, malformed, or uses the wrong variables."""


@dataclass(frozen=True)
class Prompt:
    id: str
    version: int
    notes: str
    parts: dict[str, str]

    def render(self, part: str, **values: object) -> str:
        return self.parts[part].format(**values)


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def load_prompt(path: Path, expected: dict[str, set[str]]) -> Prompt:
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
    return Prompt(str(data["id"]), int(data["version"]), str(data.get("notes", "")), parts)


@dataclass(frozen=True)
class PromptSet:
    prompts: dict[str, Prompt]

    def __getitem__(self, prompt_id: str) -> Prompt:
        return self.prompts[prompt_id]

    def versions(self, ids: list[str] | None = None) -> dict[str, int]:
        return {i: self.prompts[i].version for i in (ids or self.prompts)}


def load_prompts(directory: Path | None = None) -> PromptSet:
    """All templates the engine needs, from `directory` (default: the repo's prompts/ folder)."""
    directory = Path(directory or DEFAULT_DIR)
    prompts = {}
    for prompt_id, expected in EXPECTED.items():
        prompt = load_prompt(directory / f"{prompt_id}.toml", expected)
        if prompt.id != prompt_id:
            raise PromptError(f"{directory / (prompt_id + '.toml')}: id is '{prompt.id}', expected '{prompt_id}'")
        prompts[prompt_id] = prompt
    return PromptSet(prompts)
