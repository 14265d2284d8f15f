"""The curated reading list (ingest/reading_list.toml) says exactly what the reading-list notes say:
every entry is a link of the notes, and its title is that link's text."""

from __future__ import annotations

import re
import tomllib
from importlib import resources

import pytest
from conftest import ROOT

from ingest.arxiv import parse_arxiv_id
from ingest.sources import MD_LINK, curated_reading_list

NOTES_DIR = ROOT.parent / "shared" / "reading-list"


def _key(url: str) -> str:
    """arXiv links by id; other links without scheme, "www." and a trailing slash."""
    arxiv_id = parse_arxiv_id(url) if "arxiv.org" in url else ""
    if arxiv_id:
        return "arxiv:" + re.sub(r"v\d+$", "", arxiv_id)
    return re.sub(r"^https?://(www\.)?", "", url).rstrip("/")


def notes_links() -> dict[str, set[str]]:
    """{link key: the link texts the notes give it}."""
    notes = sorted(NOTES_DIR.glob("000_*.txt"))
    if not notes:
        pytest.skip("../shared/reading-list is absent: the reading-list test needs the shared notes beside the repo")
    links: dict[str, set[str]] = {}
    for note in notes:
        for bang, text, target in MD_LINK.findall(note.read_text(encoding="utf-8")):
            if not bang:
                links.setdefault(_key(target.strip("<>")), set()).add(text.strip())
    return links


def entries() -> list[dict]:
    return tomllib.loads(resources.files("ingest").joinpath("reading_list.toml").read_text())["paper"]


def test_every_title_is_the_link_text_of_the_notes():
    links = notes_links()
    for entry in entries():
        key = _key(entry["url"])
        assert key in links, f"{entry['id']}: {entry['url']} is not linked from the notes"
        if "title" in entry:
            assert entry["title"] in links[key], f"{entry['id']}: {entry['title']!r} is not one of {links[key]}"
        else:  # only where the notes' link text is a name, not a title
            assert all(len(text.split()) <= 2 for text in links[key]), entry["id"]


def test_the_relational_tasks_paper_has_the_notes_title():
    titles = {e["id"]: e.get("title") for e in entries()}
    assert titles["arxiv-2305.16130"] == "A Mechanism for Solving Relational Tasks in Transformer Language Models"


def test_aliases_follow_the_title_in_the_library():
    from cove.docs import ParsedDocument
    from ingest.pipeline import choose_title

    gpt2 = next(s for s in curated_reading_list() if s.doc_id == "gpt2")
    assert gpt2.title == "Language Models are Unsupervised Multitask Learners" and gpt2.alias == "GPT-2"
    assert (
        choose_title(gpt2, ParsedDocument("pdf", [])) == "Language Models are Unsupervised Multitask Learners (GPT-2)"
    )
    wolfram = next(s for s in curated_reading_list() if s.doc_id == "wolfram-chatgpt")
    assert wolfram.title == ""
    printed = ParsedDocument("html", [], title="What Is ChatGPT Doing … and Why Does It Work?")
    assert choose_title(wolfram, printed) == printed.title
