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


EDIT_CSS = ".edit{margin:.2em 0;font-size:.9em}.wave .repainted{fill:#f2b705;fill-opacity:.35;stroke:none}"
_EDIT_WORDS = {
    "repaint": "repaint of",
    "cover": "cover of",
    "extract": "stems of",
    "lego": "a new track over",
    "complete": "completion of",
}


def edit_html(request: dict[str, Any]) -> str:
    """The line naming what a result edited ("repaint of outbox/x.wav, 1.0–2.0 s"; "" for none)."""
    for kind, words in _EDIT_WORDS.items():
        edit = request.get(kind)
        if not isinstance(edit, dict):
            continue
        text = f"{words} {edit.get('source')}"
        if kind == "repaint":
            end = edit.get("end")
            text += f", {edit.get('start')}–{'end' if end is None else end} s repainted"
        elif kind == "extract":
            text += ": " + ", ".join(str(t) for t in edit.get("tracks") or [])
        return f'<p class="edit">{html.escape(text)}</p>'
    return ""


def output_label(output: dict[str, Any]) -> str:
    """How the page names one output: its stem ("vocals") or its variation ("v2")."""
    track = output.get("track")
    return html.escape(f"stem {track}" if isinstance(track, str) else f"v{output.get('variation')}")


def repainted_span(request: dict[str, Any], duration: object) -> tuple[float, float] | None:
    """The repainted range as fractions of the output's length (None when nothing was repainted)."""
    edit = request.get("repaint")
    if not isinstance(edit, dict) or not isinstance(duration, (int, float)) or duration <= 0:
        return None
    start, end = edit.get("start"), edit.get("end")
    if not isinstance(start, (int, float)):
        return None
    stop = float(end) if isinstance(end, (int, float)) else float(duration)
    return max(0.0, start / duration), min(1.0, stop / duration)


def repaint_rect(span: tuple[float, float] | None, bins: int) -> str:
    """The shaded range over a waveform SVG `bins` wide ("" for none)."""
    if span is None:
        return ""
    x, width = span[0] * bins, (span[1] - span[0]) * bins
    return (
        f'<rect class="repainted" x="{x:.1f}" y="0" width="{width:.1f}" height="2">'
        "<title>repainted</title></rect>"
    )
