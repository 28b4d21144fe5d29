"""The README is the way in: every page under docs/ is linked from it exactly once, and no
relative link in the README or in docs/ points at a file that is not in the repository.

Run: pytest -q tests/test_docs_links.py
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.helpers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
# [text](target) and ![alt](target); a target ends at whitespace or ")" (a title may follow).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def links(page: Path) -> list[str]:
    """Link targets of a Markdown page, code blocks left out (they hold shell, not links)."""
    return LINK.findall(FENCE.sub("", page.read_text()))


def is_relative(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")


def test_every_docs_page_is_linked_from_the_readme_once() -> None:
    targets = [t.split("#", 1)[0] for t in links(README) if is_relative(t)]
    counts = {page: targets.count(f"docs/{page.name}") for page in sorted(DOCS.glob("*.md"))}
    wrong = {f"docs/{page.name}": n for page, n in counts.items() if n != 1}
    assert not wrong, f"README links these docs pages other than exactly once: {wrong}"


def test_relative_links_resolve() -> None:
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in [README, *sorted(DOCS.glob("*.md"))]
        for target in links(page)
        if is_relative(target) and not (page.parent / target.split("#", 1)[0]).exists()
    ]
    assert not broken, f"links to files that do not exist: {broken}"


def test_nothing_cites_a_file_outside_the_repository() -> None:
    pages = [README, *sorted(DOCS.glob("*.md"))]
    cited = [str(p.relative_to(ROOT)) for p in pages if "DESIGN.md" in p.read_text() or "/work/" in p.read_text()]
    assert not cited, f"pages citing files that are not in the repository: {cited}"
