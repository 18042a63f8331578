"""What the page shows of a result beyond its prompt: a song's lyrics as text (section tags and
line breaks as written, in the lyrics' language) and where the weights come from (family and
licence, so a reader sees at once whether the result may be used commercially). HTML-escaped."""

from __future__ import annotations

import html
from typing import Any

LYRICS_CSS = (
    ".lyrics{margin:.3em 0;white-space:pre-wrap;font:inherit;font-style:italic;max-height:16em;overflow:auto}"
)


def lyrics_html(request: dict[str, Any]) -> str:
    """The lyrics block of a request ("" without lyrics)."""
    lyrics = request.get("lyrics")
    if not isinstance(lyrics, str) or not lyrics.strip():
        return ""
    lang = request.get("language") if isinstance(request.get("language"), str) else "en"
    return f'<pre class="lyrics" lang="{html.escape(lang)}">{html.escape(lyrics.strip())}</pre>'


def provenance(model: dict[str, Any]) -> str:
    """ ", ace-step, licence mit" for the model span (the licence "unknown" when the card has none)."""
    family = f", {model['family']}" if isinstance(model.get("family"), str) else ""
    return f"{family}, licence {model.get('license') or 'unknown'}"
