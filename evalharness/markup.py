"""Markdown escaping for untrusted text (model output, dataset text, user input): report.md and the drift section."""

from __future__ import annotations

import html
import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def md_escape(text: str) -> str:
    """Escape text for a Markdown table cell or line: HTML entities, Markdown punctuation, no line breaks."""
    text = html.escape(str(text), quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("\r", " ").replace("\n", " ")
