"""`outbox/index.html`: a static page of recent results, for a musician browsing the share.

Built only from what is on disk (result sidecars in outbox/ and outbox/<folder>/, error sidecars
in failed/ and failed/<folder>/), so any daemon on the spool can rewrite it and it survives
restarts. It opens from a file share with no server: relative links only, one `<audio controls>`
per variation, the waveform as inline SVG. No script is needed to see and play; a small one adds
a filter box, and the Content-Security-Policy admits that script (by hash) and nothing else, so
text from a job can never run even if escaping were ever missed. Everything taken from a
sidecar is HTML-escaped.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import html
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from daemon.core.fsio import atomic_write_bytes
from daemon.outbox import songtext
from daemon.outbox.measure import measures_html
from daemon.outbox.songtext import LYRICS_CSS, lyrics_html, provenance
from daemon.spool.reserve import result_folders
from jobspec.names import PAGE_NAME

log = logging.getLogger(__name__)

DEFAULT_MAX_JOBS = 200
MIN_INTERVAL_S = 2.0
NBSP = "\u00a0"

_SCRIPT = (
    "(function(){var q=document.getElementById('q'),f=document.getElementById('folder'),"
    "bar=document.getElementById('filter');bar.hidden=false;function run(){var t=q.value.toLowerCase(),"
    "d=f?f.value:'';var jobs=document.querySelectorAll('article.job');for(var i=0;i<jobs.length;i++){"
    "var a=jobs[i];a.hidden=!((!t||a.getAttribute('data-text').indexOf(t)>=0)&&"
    "(!d||a.getAttribute('data-folder')===d));}}q.addEventListener('input',run);"
    "if(f){f.addEventListener('change',run);}})();"
)
# overflow-wrap: a long word in a prompt or an id must not widen a phone's viewport.
_STYLE = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1em auto;max-width:1400px;padding:0 1em;"
    "background:#fafafa;color:#222;overflow-wrap:anywhere}h1{font-size:1.4em}.job{background:#fff;"
    "border:1px solid #ddd;border-left:4px solid #3a7;border-radius:4px;margin:0 0 1em;padding:.6em 1em}"
    ".job.failed{border-left-color:#c33}.job h3{font-size:1.05em;margin:.2em 0}"
    ".job h3 time,.folder{color:#777;font-weight:normal;font-size:.9em}"
    ".prompt{margin:.3em 0;white-space:pre-wrap;font-size:1.05em}"
    "h2.group{font-size:1.15em;margin:1.2em 0 .5em}.meta{color:#555;font-size:.9em;margin:.3em 0}"
    ".meta span{margin-right:1.2em;display:inline-block}.vars{display:flex;flex-wrap:wrap;gap:1em}"
    ".var{margin:0;flex:1 1 300px;max-width:460px}.var figcaption{font-size:.85em;color:#555}"
    ".var svg{display:block;width:100%;height:56px;background:#f0f4f2}.var svg path{fill:#3a7}"
    ".var audio{width:100%}.error{color:#a22;font-weight:bold}.hint{color:#555}"
    "#filter{margin:0 0 1em}#filter input{width:20em}" + LYRICS_CSS + songtext.EDIT_CSS
)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


# 'self' and file: both: Chromium does not count other file:// URLs as 'self'.
CSP = (
    "default-src 'none'; media-src 'self' file:; img-src 'self' data:; "
    f"style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(_SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class Entry:
    """One job on the page: its sidecar, where it lives (relative to outbox/) and its kind."""

    kind: str  # "result" | "failed"
    folder: str  # "" or the inbox subfolder's name
    sidecar_href: str  # relative to outbox/
    body: dict[str, Any]
    mtime: float

    @property
    def when(self) -> str:
        value = self.body.get("finished")
        return value if isinstance(value, str) else ""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _href(*parts: str) -> str:
    """A relative URL, each path segment percent-encoded, then escaped for the attribute."""
    return _e("/".join(quote(p, safe="") for p in parts if p))


def _num(value: object, fmt: str, unit: str = "") -> str:
    # A no-break space: on a phone a unit never wraps away from its number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:{fmt}}{unit.replace(' ', NBSP)}"


# --------------------------------------------------------------------------- collecting


def _candidates(root: Path, suffix: str, exclude: str | None) -> list[tuple[str, Path, float]]:
    """(folder, path, mtime) of `*suffix` files in `root` and one level of subfolders."""
    found: list[tuple[str, Path, float]] = []
    for folder, directory in result_folders(root):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for f in entries:
            name = f.name
            if name.startswith(".") or not name.endswith(suffix) or (exclude and name.endswith(exclude)):
                continue
            try:
                if not f.is_file(follow_symlinks=False):
                    continue
                found.append((folder, Path(f.path), f.stat().st_mtime))
            except OSError:
                continue
    return found


class SidecarCache:
    """Parsed sidecars by (path, mtime, size): a rewrite every few seconds reads only new files."""

    def __init__(self) -> None:
        self._items: dict[Path, tuple[tuple[int, int], dict[str, Any] | None]] = {}

    def load(self, path: Path) -> dict[str, Any] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        hit = self._items.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            body = json.loads(path.read_bytes())
        except (OSError, ValueError):
            body = None  # being replaced, or not JSON: left off the page
        self._items[path] = (key, body if isinstance(body, dict) else None)
        return self._items[path][1]

    def keep_only(self, paths: set[Path]) -> None:
        for p in [p for p in self._items if p not in paths]:
            del self._items[p]


def collect(
    outbox: Path, failed: Path, max_jobs: int, cache: SidecarCache | None = None
) -> tuple[list[Entry], int]:
    """The newest `max_jobs` outcomes, newest first, and how many there are in all."""
    cache = cache or SidecarCache()
    found = [("result", *c) for c in _candidates(outbox, ".json", ".error.json")]
    found += [("failed", *c) for c in _candidates(failed, ".error.json", None)]
    # The sidecar is written last, so its mtime is when the job finished: pick by it, read few.
    found.sort(key=lambda c: c[3], reverse=True)
    picked = found[:max_jobs]
    entries: list[Entry] = []
    for kind, folder, path, mtime in picked:
        body = cache.load(path)
        if body is None:
            continue
        base = "" if kind == "result" else ".."
        parts = [base, *(["failed"] if kind == "failed" else []), folder, path.name]
        entries.append(Entry(kind, folder, "/".join(p for p in parts if p), body, mtime))
    cache.keep_only({c[2] for c in picked})
    entries.sort(key=lambda e: (e.when, e.mtime), reverse=True)
    return entries, len(found)


# --------------------------------------------------------------------------- rendering


def waveform_svg(waveform: object, mark: tuple[float, float] | None = None) -> str:
    """An inline SVG of a {bins, min, max} envelope (empty string when there is none); `mark`:
    a range (fractions of the length) shaded over it, a repaint's."""
    if not isinstance(waveform, dict):
        return ""
    lo, hi = waveform.get("min"), waveform.get("max")
    if not isinstance(lo, list) or not isinstance(hi, list) or not lo or len(lo) != len(hi):
        return ""

    def clamp(v: object) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        return max(-1.0, min(1.0, float(v))) if ok else 0.0  # type: ignore[arg-type]

    n = len(hi)
    top = [f"{i + 0.5:.1f},{1 - clamp(v):.3f}" for i, v in enumerate(hi)]
    bottom = [f"{i + 0.5:.1f},{1 - clamp(v):.3f}" for i, v in reversed(list(enumerate(lo)))]
    d = "M" + " L".join(top + bottom) + " Z"
    return (
        f'<svg class="wave" viewBox="0 0 {n} 2" preserveAspectRatio="none" role="img" '
        f'aria-label="waveform"><path d="{d}"/>{songtext.repaint_rect(mark, n)}</svg>'
    )


def _prompt_html(request: dict[str, Any]) -> str:
    sections = request.get("sections")
    if isinstance(sections, list) and sections:
        items = "".join(
            f"<li>{_e(s.get('prompt'))} "
            f'<span class="folder">({_num(s.get("duration"), ".1f", " s")})</span></li>'
            for s in sections
            if isinstance(s, dict)
        )
        return f'<ol class="prompt sections">{items}</ol>'
    text = f'<p class="prompt">{_e(request.get("prompt"))}</p>'
    return text + lyrics_html(request) + songtext.edit_html(request)


def _meta(spans: list[tuple[str, str]]) -> str:
    return '<p class="meta">' + "".join(f"<span>{_e(k)}: {_e(v)}</span>" for k, v in spans) + "</p>"


def _timings(body: dict[str, Any]) -> list[tuple[str, str]]:
    t = body.get("timings") if isinstance(body.get("timings"), dict) else {}
    assert isinstance(t, dict)
    parts = [("queue_s", "queue"), ("model_load_s", "load"), ("generate_s", "generate")]
    parts += [("postprocess_s", "post"), ("total_s", "total")]
    text = ", ".join(f"{label} {_num(t.get(k), '.2f', ' s')}" for k, label in parts if k in t)
    return [("timings", text)] if text else []


def _header(entry: Entry, status: str) -> str:
    b = entry.body
    folder = f' <span class="folder">{_e(entry.folder)}/</span>' if entry.folder else ""
    return (
        f'<h3><a href="{_href(*entry.sidecar_href.split("/"))}">{_e(b.get("job_id"))}</a>{folder} '
        f'<span class="folder">{_e(status)}</span> '
        f'<time datetime="{_e(entry.when)}">{_e(entry.when.replace("T", " ")[:19])}</time></h3>'
    )


def _data_attrs(entry: Entry, request: dict[str, Any]) -> str:
    text_parts = [entry.body.get("job_id"), request.get("prompt"), request.get("model"), entry.folder]
    text_parts += [s.get("prompt") for s in request.get("sections") or [] if isinstance(s, dict)]
    error = entry.body.get("error")
    if isinstance(error, dict):
        text_parts += [error.get("type"), error.get("message")]
    text = " ".join(str(p) for p in text_parts if p).lower()
    return f'data-folder="{_e(entry.folder)}" data-text="{_e(text)}"'


def render_result(entry: Entry) -> str:
    b = entry.body
    request = b.get("request") if isinstance(b.get("request"), dict) else {}
    model = b.get("model") if isinstance(b.get("model"), dict) else {}
    assert isinstance(request, dict) and isinstance(model, dict)
    outputs = [o for o in b.get("outputs") or [] if isinstance(o, dict)]
    sidecar_dir = entry.sidecar_href.rsplit("/", 1)[0] if "/" in entry.sidecar_href else ""
    duration = outputs[0].get("duration_s") if outputs else request.get("duration")
    spans = [
        ("seed", str(request.get("seed"))),
        (
            "model",
            f"{model.get('name', request.get('model'))} "
            f"({model.get('device', '?')}, {model.get('dtype', '?')}{provenance(model)})",
        ),
        ("duration", _num(duration, ".1f", " s")),
        ("variations", str(len(outputs))),
        ("RTF", _num(b.get("rtf"), ".3f")),
        *_timings(b),
    ]
    figures = []
    for o in outputs:
        # Audio lies next to its sidecar: link by the file name, whatever the recorded prefix.
        name = PurePosixPath(str(o.get("path", ""))).name
        href = _href(sidecar_dir, name)
        caption = (
            f"{songtext.output_label(o)} · seed {_e(o.get('seed'))} · "
            f"{_num(o.get('integrated_lufs'), '.1f', ' LUFS')}"
            f" · peak {_num(o.get('true_peak_dbtp'), '.1f', ' dBTP')}{measures_html(o)} · "
            f'<a href="{href}" download>{_e(name)}</a>'
        )
        wave = waveform_svg(o.get("waveform"), songtext.repainted_span(request, o.get("duration_s")))
        figures.append(
            f'<figure class="var"><figcaption>{caption}</figcaption>{wave}'
            f'<audio controls preload="metadata" src="{href}"></audio></figure>'
        )
    return (
        f'<article class="job ok" {_data_attrs(entry, request)}>{_header(entry, "completed")}'
        f'{_prompt_html(request)}{_meta(spans)}<div class="vars">{"".join(figures)}</div></article>'
    )


def _failure_text(status: str, error: dict[str, Any]) -> tuple[str, list[str], str]:
    """The card's headline, detail lines and hint, each said once: the validator's message
    already ends with its hint and repeats its one detail, and a cancelled job's type is its
    status."""
    etype, message = str(error.get("type") or ""), str(error.get("message") or "")
    hint = str(error.get("hint") or "")
    if hint and message.endswith(f" ({hint})"):
        message = message[: -len(hint) - 3]
    headline = f"{etype}: {message}" if etype and etype != status else message
    details = []
    for d in error.get("details") or []:
        if not isinstance(d, dict) or message.endswith(f"{d.get('msg')}"):
            continue  # a detail the headline already is, formatted
        line = f" line {d.get('line')}" if d.get("line") else ""
        extra = f" ({d.get('hint')})" if d.get("hint") and d.get("hint") != hint else ""
        details.append(f"{d.get('loc')}{line}: {d.get('msg')}{extra}")
    return headline, details, hint


def render_failure(entry: Entry) -> str:
    b = entry.body
    request = b.get("request") if isinstance(b.get("request"), dict) else {}
    error = b.get("error") if isinstance(b.get("error"), dict) else {}
    assert isinstance(request, dict) and isinstance(error, dict)
    status = str(b.get("status", "failed"))
    job_href = entry.sidecar_href[: -len(".error.json")] + ".yaml"
    # A request without `model:` means the daemon's default: left out rather than shown as None.
    spans = [(key, str(request[key])) for key in ("seed", "model") if request.get(key) is not None]
    spans.append(("attempts", str(b.get("attempts", "?"))))
    headline, details, hint = _failure_text(status, error)
    items = "".join(f"<li>{_e(d)}</li>" for d in details)
    hint_html = f'<p class="hint">hint: {_e(hint)}</p>' if hint else ""
    return (
        f'<article class="job failed" {_data_attrs(entry, request)}>{_header(entry, status)}'
        f"{_prompt_html(request) if request else ''}"
        f'<p class="error">{_e(headline)}</p>'
        f"{'<ul>' + items + '</ul>' if items else ''}"
        f"{hint_html}{_meta(spans)}"
        f'<p class="meta"><a href="{_href(*job_href.split("/"))}">job file</a></p></article>'
    )


def _articles(entries: list[Entry]) -> str:
    return "\n".join(render_result(e) if e.kind == "result" else render_failure(e) for e in entries)


def _grouped(entries: list[Entry]) -> str:
    """One section per inbox folder, each newest first: the inbox's own jobs, then the folders,
    the one with the newest job first."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:  # entries are newest first, so is each group and the groups' order
        groups.setdefault(e.folder, []).append(e)
    order = sorted(groups, key=lambda f: (f != "", list(groups).index(f)))
    return "\n".join(
        f'<section class="group" data-folder="{_e(f)}"><h2 class="group">{_e(f + "/" if f else "inbox")} '
        f'<span class="folder">({len(groups[f])})</span></h2>\n{_articles(groups[f])}</section>'
        for f in order
    )


def render(entries: list[Entry], total: int, *, generated: float | None = None) -> str:
    folders = sorted({e.folder for e in entries if e.folder})
    select = ""
    if folders:
        opts = "".join(f'<option value="{_e(f)}">{_e(f)}/</option>' for f in folders)
        select = f' <select id="folder"><option value="">all folders</option>{opts}</select>'
    body = _grouped(entries) if folders else _articles(entries)
    stamp = time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", time.gmtime(generated if generated is not None else time.time())
    )
    hidden = total - len(entries)
    older = f" (the {hidden} older ones are on disk, not on this page)" if hidden > 0 else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dgx-music outbox</title><style>{_STYLE}</style></head><body>"
        f'<h1>dgx-music outbox</h1><p class="meta" id="summary">{len(entries)} of {total} job(s), '
        f"newest first{older};"
        f" updated {stamp}.</p>"
        '<p id="filter" hidden><input id="q" type="search" placeholder="filter by text" aria-label="filter">'
        f"{select}</p>"
        f"<main>\n{body}\n</main><script>{_SCRIPT}</script></body></html>\n"
    )


def write_page(
    outbox: Path, failed: Path, *, max_jobs: int = DEFAULT_MAX_JOBS, cache: SidecarCache | None = None
) -> Path:
    """Rebuild outbox/index.html from the sidecars on disk (atomic replace). OSError with a
    remedy when something else squats the page's name (no inbox folder may take it now, but an
    older version let one make outbox/index.html/): the page is not written until it is moved."""
    target = outbox / PAGE_NAME
    with contextlib.suppress(FileNotFoundError):
        # A link or file there is simply replaced (rename replaces the name, never a target);
        # a directory cannot be, and is not ours to remove.
        if stat.S_ISDIR(os.lstat(target).st_mode):
            raise OSError(
                errno.EEXIST,
                f"outbox/{PAGE_NAME} is a directory, not the page (results of an inbox folder of that "
                "name?); move it away and the page is written again",
            )
    entries, total = collect(outbox, failed, max_jobs, cache)
    return atomic_write_bytes(target, render(entries, total).encode("utf-8"))


class PageRefresher:
    """Debounced rewrites: `mark()` after each outcome, `tick()` from a loop. The page is
    rewritten at most every `min_interval_s`, and once more after the last mark of a burst."""

    def __init__(
        self,
        outbox: Path,
        failed: Path,
        *,
        max_jobs: int = DEFAULT_MAX_JOBS,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.outbox = outbox
        self.failed = failed
        self.max_jobs = max_jobs
        self.min_interval_s = min_interval_s
        self.cache = SidecarCache()
        self.dirty = False
        self.writes = 0
        self._last: float | None = None

    def mark(self) -> None:
        self.dirty = True

    def tick(self, now: float | None = None) -> bool:
        """Rewrite if marked and the interval allows; returns True when it wrote."""
        now = time.monotonic() if now is None else now
        if not self.dirty or (self._last is not None and now - self._last < self.min_interval_s):
            return False
        return self.flush(now)

    def flush(self, now: float | None = None) -> bool:
        """Rewrite now if marked (stopping: no debounce)."""
        if not self.dirty:
            return False
        self.dirty = False  # a mark during the write makes the next tick write again
        self._last = time.monotonic() if now is None else now
        try:
            write_page(self.outbox, self.failed, max_jobs=self.max_jobs, cache=self.cache)
        except BaseException:
            self.dirty = True
            raise
        self.writes += 1
        return True
