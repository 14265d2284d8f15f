"""HTML articles to text: keep the main content, headings as sections with anchors for deep links.

Web articles (transformer-circuits.pub, blog posts, LessWrong) wrap their text in navigation, sidebars,
footers, scripts and comment widgets. We parse with a real HTML parser (BeautifulSoup over lxml),
pick the element that holds the article, then walk it in document order, turning block elements into
paragraphs and headings into `Section`s whose anchor is the heading's id (or the nearest id around it),
so a citation can link to ``url#anchor``. Anchors are kept only when they are plain ids
(`cove.untrusted.safe_anchor`): the page is untrusted, and the anchor ends up in a link.
"""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Doctype, ProcessingInstruction

from cove.docs import Page, ParsedDocument, Section
from cove.untrusted import safe_anchor
from ingest.clean import clean_page_text

DROP_TAGS = {
    "script",
    "style",
    "noscript",
    "template",
    "svg",
    "canvas",
    "iframe",
    "form",
    "button",
    "input",
    "select",
    "textarea",
    "nav",
    "header",
    "footer",
    "aside",
    "dialog",
    "object",
    "embed",
    "link",
    "meta",
}
DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "dialog"}
# Class/id words of page furniture. Matched per word, so "d-article" or "post-body" are kept.
FURNITURE = re.compile(
    r"(?:^|[\s_-])(nav|navbar|menu|sidebar|footer|header|cookie|cookies|banner|comments?|share|social|"
    r"related|advert|ads|newsletter|subscribe|breadcrumbs?|toc|table-of-contents|popup|modal)(?:$|[\s_-])",
    re.I,
)
MAIN_SELECTORS = [
    "article",
    "main",
    "[role=main]",
    "d-article",
    "#content",
    ".content",
    ".post",
    ".entry-content",
]
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
BLOCKS = HEADINGS | {
    "p",
    "div",
    "section",
    "article",
    "main",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "blockquote",
    "pre",
    "table",
    "tr",
    "figure",
    "figcaption",
    "hr",
    "br",
    "d-article",
    "d-figure",
    "d-footnote-list",
}
WS = re.compile(r"\s+")


def parse_html(data: bytes) -> ParsedDocument:
    soup = BeautifulSoup(data, "lxml")
    title = _title(soup)
    for tag in soup.find_all(list(DROP_TAGS)):
        tag.decompose()
    for tag in soup.find_all(attrs={"role": True}):
        if not _decomposed(tag) and tag.get("role") in DROP_ROLES:
            tag.decompose()
    main = _main_element(soup)
    _drop_furniture(main)
    builder = _TextBuilder()
    builder.walk(main)
    text, sections = builder.finish()
    text = clean_page_text(text)
    return ParsedDocument(kind="html", pages=[Page(1, text, _reanchor(text, sections))], title=title)


def _title(soup: BeautifulSoup) -> str:
    """The page's own title: `og:title`, else `<title>`, else the first `<h1>`. A title that is the
    `<h1>` plus the site's name ("Frederick Bates (politician) - Wikipedia") is the `<h1>`."""
    og = soup.find("meta", attrs={"property": "og:title"})
    h1 = soup.find("h1")
    heading = WS.sub(" ", h1.get_text(" ")).strip() if h1 else ""
    if og and og.get("content"):
        title = WS.sub(" ", og["content"]).strip()
    elif soup.title and soup.title.string:
        title = WS.sub(" ", soup.title.string).strip()
    else:
        return heading
    return heading if heading and _SITE_SUFFIX.fullmatch(title[len(heading) :]) and title.startswith(heading) else title


_SITE_SUFFIX = re.compile(r"\s+[-|\u2013\u2014\u00b7:]\s+\S.{0,60}")  # " - Wikipedia", " | Site name"


def _main_element(soup: BeautifulSoup) -> Tag:
    """The candidate container with the most text; the body when no candidate holds most of it."""
    body = soup.body or soup
    body_len = len(body.get_text(" ", strip=True))
    best, best_len = None, 0
    for selector in MAIN_SELECTORS:
        for tag in soup.select(selector):
            length = len(tag.get_text(" ", strip=True))
            if length > best_len:
                best, best_len = tag, length
    # A tiny <article> teaser inside a long page is not the article.
    if best is not None and best_len >= 0.25 * body_len:
        return best
    return body


def _decomposed(tag: Tag) -> bool:
    """`Tag.decomposed` without its cost: on a live tag, bs4 looks the flag up as a child element
    named '_decomposed', a search of the whole subtree; done for every tag of a deeply nested page,
    that is quadratic (a minute for 5,000 levels)."""
    return bool(tag.__dict__.get("_decomposed", False))


def _drop_furniture(main: Tag) -> None:
    total = max(1, len(main.get_text(" ", strip=True)))
    for tag in main.find_all(True):
        if _decomposed(tag) or tag.attrs is None:
            continue
        words = " ".join(tag.get("class", []) or []) + " " + (tag.get("id") or "")
        if FURNITURE.search(words) and len(tag.get_text(" ", strip=True)) < 0.3 * total:
            tag.decompose()


_CLOSE = ("close",)  # marks the end of a block element on the walk's stack


class _TextBuilder:
    """Walks the tree, emitting paragraphs and recording headings at their text offsets."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.sections: list[Section] = []
        self.last_anchor = ""

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def _break(self) -> None:
        if self.parts and not self.parts[-1].endswith("\n\n"):
            self._emit("\n\n" if not self.parts[-1].endswith("\n") else "\n")

    def walk(self, root: Tag) -> None:
        """Visit `root`'s descendants in document order, with an explicit stack instead of recursion:
        articles nested thousands of elements deep are text like any other (Python's stack is not)."""
        # Stack items: a node to visit, or _CLOSE + a block tag whose children are all emitted.
        stack: list = list(reversed(list(root.children)))
        while stack:
            item = stack.pop()
            if isinstance(item, tuple):
                self._break()
                continue
            self._visit(item, stack)

    def _visit(self, child, stack: list) -> None:
        if isinstance(child, (Comment, Doctype, ProcessingInstruction)):
            return
        if isinstance(child, NavigableString):
            text = WS.sub(" ", str(child))
            if text.strip() or (self.parts and not self.parts[-1].endswith((" ", "\n"))):
                self._emit(text)
            return
        if not isinstance(child, Tag):
            return
        if child.get("id"):
            self.last_anchor = child["id"]
        elif child.name == "a" and child.get("name"):
            self.last_anchor = child["name"]
        if child.name in HEADINGS:
            self._heading(child)
        elif child.name == "pre":
            self._break()
            self._emit(child.get_text())
            self._break()
        elif child.name in BLOCKS:
            self._break()
            if child.name == "li":
                self._emit("- ")
            stack.append(_CLOSE)
            stack.extend(reversed(list(child.children)))
        else:
            stack.extend(reversed(list(child.children)))

    def _heading(self, tag: Tag) -> None:
        title = WS.sub(" ", tag.get_text(" ")).strip()
        if not title:
            return
        # Only a plain id becomes a link fragment: a hostile one could close the link it is put in.
        anchor = safe_anchor(tag.get("id") or _inner_anchor(tag) or self.last_anchor)
        self._break()
        self.sections.append(Section(self.length, title, anchor))
        self._emit(title)
        self._break()

    def finish(self) -> tuple[str, list[Section]]:
        return "".join(self.parts), self.sections


def _inner_anchor(tag: Tag) -> str:
    inner = tag.find(attrs={"id": True}) or tag.find("a", attrs={"name": True})
    if inner is None:
        return ""
    return inner.get("id") or inner.get("name") or ""


def _reanchor(text: str, sections: list[Section]) -> list[Section]:
    """Cleaning shifts offsets; find each heading again in the cleaned text, in order."""
    found, cursor = [], 0
    for section in sections:
        pos = text.find(section.title, cursor)
        if pos < 0:
            continue
        found.append(Section(pos, section.title, section.anchor))
        cursor = pos + len(section.title)
    return found
