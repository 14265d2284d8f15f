"""The checks that do not trust the model: crafted answers they must catch (fast, no model)."""

from __future__ import annotations

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
    assert not result.supported
    assert any("number" in reason for reason in result.reasons)


def test_number_inside_another_number_does_not_count():
    # "10" is not "10,000"; "3" must be a whole number of the source, not a digit of "175".
    assert not check("LoRA reduces trainable parameters by 10 times [2].").supported
    assert check("LoRA reduces trainable parameters by 10,000 times [2].").supported


def test_wrong_paper_is_caught():
    # A true LoRA fact, but cited to the Transformer paper.
    result = check("LoRA reduces the number of trainable parameters by 10,000 times [1].")
    assert not result.supported


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
    import numpy as np

    far = Evidence(1, TRANSFORMER.text, TRANSFORMER.header, np.array([1.0, 0.0], dtype=np.float32))
    sentence_vector = np.array([0.0, 1.0], dtype=np.float32)
    result = checks.check_sentence("It employs 8 parallel attention heads [1].", {1: far}, sentence_vector, 0.5)
    assert not result.supported and "meaning" in result.reasons[-1]


def test_split_sentences_keeps_trailing_citations():
    text = "It uses 8 heads. [1] LoRA cuts parameters by 10,000 times [2]. Done."
    assert checks.split_sentences(text) == [
        "It uses 8 heads [1].",
        "LoRA cuts parameters by 10,000 times [2].",
        "Done.",
    ]
    assert checks.citations("A claim [1, 3][2].") == [1, 3, 2]


def test_numbers_and_entities():
    assert checks.numbers("eight heads, 1,000 steps and 0.10 dropout [3]") == {"8", "1000", "0.1"}
    assert {"GPT-2", "LoRA"} <= checks.entities("We compare GPT-2 and LoRA here.")
    assert checks.wants_number("How many layers does it have?")
    assert not checks.wants_number("Why does beam search repeat itself?")


def test_extractive_answer_prefers_the_sentence_with_the_answer():
    picked = checks.extractive_answer("How many parallel attention heads are used?", [TRANSFORMER, LORA])
    assert picked[0] == ("In this work we employ h = 8 parallel attention layers, or heads.", 1)


def test_extractive_answer_quotes_two_sentences_when_the_second_holds_the_answer():
    llama = Evidence(
        1,
        "To improve the training stability, we normalize the input of each transformer sub-layer, instead of "
        "normalizing the output. We use the RMSNorm normalizing function, introduced by Zhang and Sennrich (2019).",
        "LLaMA: Open and Efficient Foundation Language Models",
    )
    picked = checks.extractive_answer("Which normalizing function does LLaMA apply to each sub-layer input?", [llama])
    assert len(picked) == 1 and "RMSNorm" in picked[0][0] and picked[0][0].startswith("To improve")


def test_extractive_answer_skips_questions_in_the_paper_and_cut_off_sentences():
    lora = Evidence(
        1,
        "Which weight matrices in the Transformer should we apply LoRA to? "
        "Adapting both Wq and Wv gives the best performance overall. "
        "We find that putting all the parameters in the weight matrices of the same type is not good, and the",
        "LoRA",
    )
    picked = checks.extractive_answer("Which weight matrices work best to adapt with LoRA?", [lora])
    assert len(picked) == 1
    quote = picked[0][0]
    assert quote.endswith("Adapting both Wq and Wv gives the best performance overall."), quote
    lone_question = checks.extractive_answer("Which weight matrices work best to adapt with LoRA?", [
        Evidence(1, lora.text.split("? ")[0] + "?", "LoRA"),
        Evidence(2, "Adapting both Wq and Wv gives the best performance overall.", "LoRA"),
    ])  # fmt: skip
    assert lone_question[0][1] == 2, "the paper's own question is not an answer"


def test_extractive_answer_takes_one_sentence_per_named_paper():
    llama = Evidence(1, "We add rotary positional embeddings (RoPE) at each layer of the network.", "LLaMA")
    gpt1 = Evidence(2, "We used learned position embeddings instead of the sinusoidal version.", "GPT-1 gpt1")
    other = Evidence(3, "Positional embeddings are discussed in many surveys of the field.", "A survey")
    picked = checks.extractive_answer("Which positional embeddings do LLaMA and GPT-1 use?", [llama, gpt1, other])
    assert sorted(n for _, n in picked) == [1, 2]
    single = checks.extractive_answer("Which positional embeddings does LLaMA use?", [llama, gpt1, other])
    assert [n for _, n in single] == [1], "one named paper: one quote"


def test_how_many_questions_know_what_is_counted():
    assert checks.asked_terms("How many warmup steps does the Transformer schedule use?") == {"warmup", "step"}
    assert checks.entities("How big is GPT-2's WebText and the Transformer\u2019s vocabulary?") >= {"GPT-2", "WebText"}
    assert "GPT-2's" not in checks.entities("What is GPT-2's context size?")
    assert "What" not in checks.entities("What is LoRA? What rank does it use?")


def test_prompt_loader_checks_variables(tmp_path):
    prompts = load_prompts()
    assert set(prompts.versions()) == {"answer", "plan", "verify", "revise"}
    bad = tmp_path / "answer.toml"
    bad.write_text('id = "answer"\nversion = 1\nsystem = "Sources: {sourcez}"\nuser = "{question}{history}"\n')
    with pytest.raises(PromptError, match="sourcez"):
        load_prompt(bad, {"system": {"sources"}, "user": {"history", "question"}})
    missing = tmp_path / "plan.toml"
    missing.write_text('id = "plan"\nversion = 2\n')
    with pytest.raises(PromptError, match="missing"):
        load_prompt(missing, {"user": {"max_questions"}})
