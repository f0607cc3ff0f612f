"""MkDocs hook: committed results pages (a preset's generated ``results.md``) read well on the site.

- Links into run folders that are not committed (``../runs/<run>/audit-<key>/audit.md``) become plain text:
  the run folders stay where the study ran, so on the site those links would lead nowhere; the text stays.
- Their tables (one row per run × metric × ε, a dozen columns) keep each row on one line and scroll sideways,
  instead of wrapping every cell into a column of words.
"""

from __future__ import annotations

import re

RUN_LINK = re.compile(r"\[([^\]]+)\]\((?:\.\./)+runs/[^)]+\)")


def _generated(page) -> bool:
    """A results page written by ``otrobust reproduce``, copied under docs/ beside its study's page."""
    return bool(re.match(r"results-[\w-]+/results\.md$", page.file.src_uri))


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    return RUN_LINK.sub(r"\1", markdown)


def on_page_content(html: str, page, **kwargs) -> str:
    return f'<div class="data-tables">{html}</div>' if _generated(page) else html
