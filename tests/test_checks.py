"""The checks that do not trust the model: crafted claims they must catch (fast, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from cove import checks
from cove.checks import Evidence
from cove.prompts import PromptError, load_prompt, load_prompts

TRANSFORMER = Evidence(
    1,
    "Multi-head attention allows the model to jointly attend to information from different representation "
    "subspaces at different positions. In this work we employ h = 8 parallel attention layers, or heads. "
    "For each of these we use dk = dv = dmodel/h = 64.",
    header="Attention Is All You Need 3.2.2 Multi-Head Attention 1706.03762",
)
LORA = Evidence(
    2,
    "LoRA can reduce the number of trainable parameters by 10,000 times and the GPU memory requirement by 3 "
    "times compared to GPT-3 175B fine-tuned with Adam.",
    header="LoRA: Low-Rank Adaptation of Large Language Models Abstract 2106.09685",
)
SOURCES = {1: TRANSFORMER, 2: LORA}


def check(sentence: str) -> checks.SentenceCheck:
    return checks.check_sentence(sentence, SOURCES, None, 0.0)


def test_supported_sentence_passes():
    result = check("The base model uses h = 8 parallel attention heads [1].")
    assert result.supported and result.supported_by == 1


def test_wrong_number_is_caught():
    result = check("The Transformer uses 64 parallel attention heads [1].")
    assert not result.supported and result.wrong_number


def test_number_inside_another_number_does_not_count():
    assert not check("LoRA reduces trainable parameters by 10 times [2].").supported
    assert check("LoRA reduces trainable parameters by 10,000 times [2].").supported


def test_wrong_paper_is_caught():
    assert not check("LoRA reduces the number of trainable parameters by 10,000 times [1].").supported


def test_entity_missing_from_source_is_caught():
    result = check("BERT uses 8 parallel attention heads [1].")
    assert not result.supported and any("BERT" in r for r in result.reasons)


def test_uncited_sentence_gets_a_citation_only_if_a_source_supports_it():
    backed = check("The model employs h = 8 parallel attention heads.")
    assert backed.supported and backed.supported_by == 1
    unbacked = check("Attention was invented in 1997 by a committee.")
    assert not unbacked.supported and "cites no source" in unbacked.reasons[0]


def test_citation_of_missing_source_is_reported():
    result = check("The model employs 8 parallel attention heads [7].")
    assert not result.supported and "does not exist" in result.reasons[0]


def test_semantic_similarity_threshold_applies():
    far = Evidence(1, TRANSFORMER.text, TRANSFORMER.header, np.array([1.0, 0.0], dtype=np.float32))
    result = checks.check_sentence("It employs 8 parallel attention heads [1].", {1: far}, np.array([0.0, 1.0]), 0.5)
    assert not result.supported and "meaning" in result.reasons[-1]


def test_contradiction_is_a_different_number_for_the_same_thing():
    quote = "In this work we employ h = 8 parallel attention layers, or heads."
    assert checks.contradicts("The base Transformer uses 1 attention head.", quote) == {"1"}
    assert checks.contradicts("The base Transformer uses 8 attention heads.", quote) == set()
    assert checks.contradicts("The model was trained for 12 hours.", quote) == set(), "not about the same thing"


def test_prompt_loader_checks_variables_and_reply_markers(tmp_path):
    prompts = load_prompts()
    assert set(prompts.versions()) == {"answer", "plan", "verify", "question"}
    assert prompts["verify"].marker("not_stated") == "Not stated."
    bad = tmp_path / "answer.toml"
    bad.write_text('id = "answer"\nversion = 1\nsystem = "Sources: {sourcez}"\nuser = "{question}{history}"\n')
    with pytest.raises(PromptError, match="sourcez"):
        load_prompt(bad, {"system": {"sources"}, "user": {"history", "question"}})
    no_marker = tmp_path / "verify.toml"
    no_marker.write_text('id = "verify"\nversion = 3\nsystem = "{evidence}"\nuser = "{question}"\n')
    with pytest.raises(PromptError, match="not_stated"):
        load_prompt(no_marker, {"system": {"evidence"}, "user": {"question"}}, {"not_stated"})
