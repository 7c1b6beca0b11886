"""The docs stay readable files whose relative links resolve (an edit once grew a page to 22 MB)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_a_page_is_small_and_its_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert len(text) < 200_000, f"{page.name} is {len(text):,} characters: an edit went wrong"
    missing = [
        target
        for target in LINK.findall(text)
        if "://" not in target and not target.startswith("mailto:") and not (page.parent / target).exists()
    ]
    assert not missing, f"{page.name} links to files that do not exist: {missing}"
