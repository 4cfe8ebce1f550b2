"""mkdocs hook: `\\|` inside a code span of a table row becomes `|`, so one Markdown source reads right on both sides.

GitHub needs a pipe in a table cell escaped even inside a code span, and shows `|` there; Python-Markdown's tables
extension already takes a pipe inside a code span as text and would show the backslash.
"""

from __future__ import annotations

import re

#: A code span of single backticks (the docs use no longer fences inside table cells).
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def unescape_table_pipes(markdown: str) -> str:
    """Return `markdown` with `\\|` turned into `|` inside code spans of table rows (lines starting with a pipe,
    outside fenced code blocks)."""
    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.lstrip().startswith("|"):
            line = _CODE_SPAN.sub(lambda m: m.group(0).replace("\\|", "|"), line)
        out.append(line)
    return "".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """mkdocs hook: unescape the pipes of table code spans on every page, the generated one included."""
    return unescape_table_pipes(markdown)
