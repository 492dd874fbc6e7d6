"""Docs that stand alone: every relative link in README.md and docs/*.md points at a file of the repository, and
every `#anchor` at a heading or an explicit `<a id=...>` of the target document."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading slugs plus explicit `<a id="...">` / `name="..."` anchors."""
    text = FENCE.sub("", doc.read_text())
    out = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def _links(doc: Path) -> list[str]:
    text = FENCE.sub("", doc.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for link in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto: ...
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.exists():
            broken.append(f"{link} (no file {target.relative_to(ROOT) if ROOT in target.parents else target})")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no anchor #{anchor} in {target.name})")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_no_document_sends_readers_to_files_outside_the_repository():
    stale = ("METHODS.md", "ARCHITECTURE.md", "../shared")
    hits = [f"{p.relative_to(ROOT)}: {s}" for p in [*DOCS, *ROOT.joinpath("adaptune").rglob("*.py")]
            for s in stale if s in p.read_text()]
    assert not hits, hits
