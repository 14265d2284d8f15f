"""The one text toolkit (cove.text): sentences, stems, numbers, names, normal forms (fast, no model)."""

from __future__ import annotations

from cove import text as tx
from cove.lexical import tokenize


def test_sentences_do_not_end_at_abbreviations_decimals_or_initials():
    text = (
        "We follow Vaswani et al. and use a rate of 3.5e-4 (see Fig. 2). Results in Sec. 4 show a 0.5 gain, "
        "e.g. on WMT. A. Vaswani wrote it. The end"
    )
    assert tx.split_sentences(text) == [
        "We follow Vaswani et al. and use a rate of 3.5e-4 (see Fig. 2).",
        "Results in Sec. 4 show a 0.5 gain, e.g. on WMT.",
        "A. Vaswani wrote it.",
        "The end",
    ]


def test_sentences_keep_trailing_citations_and_break_at_paragraphs_and_bullets():
    assert tx.split_sentences("It uses 8 heads. [1] LoRA cuts parameters by 10,000 times [2]. Done.") == [
        "It uses 8 heads [1].",
        "LoRA cuts parameters by 10,000 times [2].",
        "Done.",
    ]
    assert tx.split_sentences("First point\n\nsecond paragraph without a stop \u2022 a bullet") == [
        "First point",
        "second paragraph without a stop",
        "a bullet",
    ]


def test_sentence_spans_are_offsets_into_the_original_text():
    text = "  One sentence here.   Another one follows. "
    spans = tx.sentence_spans(text)
    assert [text[s:e] for s, e in spans] == ["One sentence here.", "Another one follows."]


def test_one_stemmer_for_bm25_and_the_checks():
    # The checks' key terms and BM25's tokens stem a word the same way.
    assert tx.stem("heads") == tokenize(["heads"], as_strings=True)[0][0] == "head"
    assert tx.key_terms("The attention heads were trained") == {tx.stem("attention"), "head", tx.stem("trained")}
    assert tx.key_terms("the model's warmup") == {tx.stem("model"), "warmup"}


def test_numbers_names_and_forms():
    assert tx.numbers("eight heads, 1,000 steps and 0.10 dropout [3]") == {"8", "1000", "0.1"}
    assert {"GPT-2", "LoRA"} <= tx.entities("We compare GPT-2 and LoRA here.")
    assert "What" not in tx.entities("What is LoRA? What rank does it use?")
    assert tx.has_entity("GPT-2", tx.fold("trained like gpt2 was"))
    assert tx.match_form("The \ufb01ne-tuning probabil- ity") == "the fine-tuning probability"
    assert tx.index_form("\u03b22 of GPT-2") == " beta 2 of GPT2"
    assert tx.citations("A claim [1, 3][2].") == [1, 3, 2]
    assert tx.strip_citations("A claim [1] here.") == "A claim here."


def test_aliases_from_a_papers_opening_and_from_hostile_text():
    """The names a paper gives itself come from its text; a long run of letters (untrusted text)
    costs milliseconds, not the quadratic backtracking an unbounded word pattern takes."""
    import time

    from cove.aliases import aliases_from_text

    opening = (
        "We propose LoRA. Low-Rank Adaptation, or LoRA, freezes the weights. LoRA adds trainable "
        "rank decomposition matrices; LoRA performs on-par with fine-tuning. "
    )
    assert aliases_from_text(opening, "LoRA: Low-Rank Adaptation of Large Language Models") == ["LoRA"]
    assert aliases_from_text(opening.replace("LoRA", "XyZ"), "An unrelated title") == []
    started = time.process_time()
    for hostile in ["a" * 225_000, "Ab " * 80_000, "We propose " + "Abc " * 50_000]:
        assert aliases_from_text(hostile, "title") == []
    assert time.process_time() - started < 5  # quadratic backtracking took minutes


def test_counts_written_as_words_are_numbers_with_no_gaps():
    """The table jumped from "twelve" to "sixteen" and "twenty": every count to ninety-nine reads now."""
    assert tx.numbers("thirteen tasks, fourteen layers and seventeen heads") == {"13", "14", "17"}
    assert tx.numbers("twenty-four layers, thirty heads, ninety-nine steps") == {"24", "30", "99"}
    assert tx.numbers("zero-shot results on one task") == {"1"}  # zero-shot is not a count
    assert len(tx.NUMBER_WORDS) == 19 + 8 + 8 * 9
