"""MkDocs hook: links from a committed results page into run folders that are not committed become plain text.

A preset's ``results.md`` links each run's audit report (``../runs/<run>/audit-<key>/audit.md``). The run
folders stay where the study ran, so on the site those links would lead nowhere; the text stays.
"""

from __future__ import annotations

import re

RUN_LINK = re.compile(r"\[([^\]]+)\]\((?:\.\./)+runs/[^)]+\)")


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    return RUN_LINK.sub(r"\1", markdown)
