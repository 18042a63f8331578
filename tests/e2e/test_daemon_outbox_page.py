"""After a real daemon run: outbox/index.html in a real headless Chromium, and
state/metrics.prom through Prometheus' own parser.

The run has a job with two variations whose prompt is hostile HTML, a plain job, and a job
that fails (unknown model). The page must list all three, give every output a player, link
only relatively, and show the prompt as text: the markup in it must not run or become elements.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProcess, SpoolView, job_yaml, run_cli, wait_until, write_config

HOSTILE = (
    '<script>alert(1)</script> & "quotes" '
    "<script>document.documentElement.setAttribute('data-pwned','script')</script>"
    "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','img')\">"
)
# A daemon run, two jobs, a failure and two browser runs: about half a minute on a small box.
pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--mute-audio",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if path:
            return path
    pytest.skip("no chromium: install it (apt-get install chromium) to test the outbox page in a browser")


def run_chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


class DomSummary(HTMLParser):
    """What the test asserts on: elements, attributes with URLs, article classes, text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)

    def find(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("outbox-page")
    config = write_config(root / "config.yaml", root / "spool", tiny_model_dir)
    sp = SpoolView(root / "spool")
    # Cancelled while it waits in the inbox (no daemon yet): a `cancelled` card.
    for folder in (sp.inbox, sp.failed):
        folder.mkdir(parents=True)
    sp.drop("changed-mind.yaml", job_yaml("a tune nobody wants any more", duration=0.5))
    cancelled = run_cli(config, "cancel", "changed-mind")
    assert cancelled.returncode == 0, cancelled.stderr
    with DaemonProcess(config, root / "daemon.log") as daemon:
        daemon.start()
        sp.drop("hostile.yaml", job_yaml(HOSTILE, duration=0.5, count=2, seed=7))
        sp.drop("plain.yaml", job_yaml("a calm little tune for the page", duration=0.5, seed=8))
        sp.drop("nomodel.yaml", job_yaml("this one names a model nobody has", duration=0.5, model="nope"))
        sp.drop(
            "noref.yaml", job_yaml("continues a file that is not there", continue_from="library/gone.wav")
        )
        (sp.inbox / "album").mkdir()
        tmp = sp.inbox / "album" / ".track.yaml.partial"
        tmp.write_text(job_yaml("a track in a folder of its own", duration=0.5, seed=9))
        tmp.rename(sp.inbox / "album" / "track.yaml")
        for job_id in ("hostile", "plain", "nomodel", "noref"):
            sp.wait_outcome(job_id, 120, alive=daemon)
        wait_until(
            lambda: (sp.outbox / "album" / "track.json").exists(), 60, what="album/track", alive=daemon
        )
        page = sp.outbox / "index.html"
        # Debounced: the page catches up within a couple of seconds of the last outcome.
        wait_until(
            lambda: (
                page.exists()
                and all(j in page.read_text() for j in ("hostile", "plain", "nomodel", "noref", "track"))
            ),
            20,
            what="the page to list every job",
            alive=daemon,
        )
        assert daemon.stop() == 0, daemon.log_tail()
        log = daemon.log()
    assert "Traceback" not in log, log
    return {"spool": sp, "page": page, "log": log}


def test_page_in_headless_chromium(finished_run: dict[str, Any]) -> None:
    sp: SpoolView = finished_run["spool"]
    page: Path = finished_run["page"]
    url = page.resolve().as_uri()
    dumped = run_chromium("--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = DomSummary()
    dom.feed(dumped.stdout)

    # The browser kept the markup in the prompt as text: no alert ran, no element appeared.
    html_tag = dom.find("html")[0]
    assert "data-pwned" not in html_tag, f"job text ran as script: {html_tag}"
    assert not [a for a in dom.find("img")], "an <img> from the prompt became an element"
    scripts = dom.find("script")
    assert len(scripts) == 1, "only the page's own filter script"
    text = " ".join(" ".join(dom.text).split())
    assert '<script>alert(1)</script> & "quotes"' in text

    # Players: one per output of every completed job, pointing at the files next to the page.
    sidecars = {b["job_id"]: b for _p, b in sp.sidecars()}
    expected = sorted(
        o["path"] for b in sidecars.values() if b["status"] == "completed" for o in b["outputs"]
    )
    assert expected == ["hostile-v1.wav", "hostile-v2.wav", "plain.wav"]  # album/ is one level down
    audio = sorted(str(a.get("src")) for a in dom.find("audio"))
    assert audio == ["album/track.wav", "hostile-v1.wav", "hostile-v2.wav", "plain.wav"]
    assert all("controls" in a for a in dom.find("audio"))
    for src in audio:
        assert (sp.outbox / src).is_file()
    assert len(dom.find("svg")) == len(audio), "a waveform per output"

    # The failure, with its type and hint.
    articles = [a for a in dom.find("article")]
    assert len(articles) == 6
    assert sum("failed" in str(a.get("class")) for a in articles) == 3
    assert "unknown_model" in text and "model 'nope' is not configured" in text
    assert "hint:" in text

    # Relative links only.
    for tag, attrs in dom.tags:
        for key in ("href", "src"):
            value = attrs.get(key)
            if value is None:
                continue
            assert not value.startswith(("/", "file:", "http:", "https:")) and "://" not in value, (
                tag,
                key,
                value,
            )
            assert str(sp.root) not in value
    hrefs = [str(a.get("href")) for a in dom.find("a")]
    assert "../failed/nomodel.error.json" in hrefs and "hostile.json" in hrefs
    assert (sp.outbox / "../failed/nomodel.yaml").is_file() and "../failed/nomodel.yaml" in hrefs

    # Newest first within each folder's section: the finished times in page order only go down.
    inbox = [a.get("data-text", "") for a in articles if not a.get("data-folder")]
    finished = [sidecars[next(j for j in sidecars if str(o).startswith(j))]["finished"] for o in inbox]
    assert finished == sorted(finished, reverse=True)

    # A screenshot, kept for a person to look at.
    artifacts = Path(os.environ.get("DGX_MUSIC_ARTIFACTS") or tempfile.gettempdir()) / "dgx-music-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "outbox-index.png"
    shot.unlink(missing_ok=True)
    taken = run_chromium(f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.stat().st_size > 5000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_file_parses_and_counts_match_the_outbox(finished_run: dict[str, Any]) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    sp: SpoolView = finished_run["spool"]
    text = (sp.state / "metrics.prom").read_text()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    ours = [n for n in families if n.startswith("dgx_music_")]
    assert len(ours) >= 5, ours

    def samples(name: str) -> list[Any]:
        return families[name].samples

    jobs = {
        (s.labels["outcome"], s.labels["error_type"]): s.value
        for s in samples("dgx_music_jobs")
        if s.name.endswith("_total")
    }
    completed = [b for _p, b in sp.sidecars() if b["status"] == "completed"]
    failed = [b for _p, b in sp.sidecars() if b["status"] != "completed"]
    assert jobs[("completed", "")] == len(completed) + 1 == 3  # album/track.json is one level down
    assert jobs[("failed", "unknown_model")] == 1 and jobs[("failed", "invalid_job")] == 1
    assert len(failed) == 3  # and the one cancelled before this daemon started
    gen_count = next(s.value for s in samples("dgx_music_generation_seconds") if s.name.endswith("_count"))
    assert gen_count == 3
    audio = next(s.value for s in samples("dgx_music_audio_seconds") if s.name.endswith("_total"))
    in_outbox = sum(o["duration_s"] for b in completed for o in b["outputs"])
    assert audio == pytest.approx(in_outbox + 0.5, abs=0.01)  # + album/track
    assert families["dgx_music_rtf_ratio"].type == "histogram" and "dgx_music_rtf" not in families
    # The file a stopped daemon leaves says so; nothing is queued or running any more.
    assert samples("dgx_music_up")[0].value == 0
    assert samples("dgx_music_queue_length")[0].value == 0
    assert samples("dgx_music_jobs_running")[0].value == 0
    loaded = {s.labels["model"]: s.value for s in samples("dgx_music_model_loaded")}
    assert loaded == {"tiny": 0}  # the stopped daemon holds no model
    assert samples("dgx_music_gpu_memory_bytes")[0].value == 0  # CPU
    info = samples("dgx_music_info")[0]
    from daemon import __version__

    assert info.labels["version"] == __version__ and info.value == 1
    assert samples("dgx_music_start_time_seconds")[0].value > 1.6e9


# Evaluated in the page through the DevTools protocol (which page scripts and the CSP do not
# limit): what the browser computed. It waits for every player's metadata, so the durations are
# the ones shown before anything is played.
PROBE = """new Promise(function(resolve){
var out={width:window.innerWidth,overflow:document.documentElement.scrollWidth-window.innerWidth,wide:[]};
document.querySelectorAll('body *').forEach(function(e){var b=e.getBoundingClientRect();
  if(b.width>window.innerWidth){out.wide.push(e.tagName+'.'+e.className+': '+e.textContent.slice(0,60));}});
function cs(sel,prop){var e=document.querySelector(sel);return e?getComputedStyle(e)[prop]:null;}
out.prompt_white_space=cs('p.prompt','whiteSpace');
out.group_font_size=cs('h2.group','fontSize');
out.failed_border=cs('.job.failed','borderLeftColor');
var spans=document.querySelectorAll('.meta span, figcaption');
out.split_units=[].filter.call(spans,function(s){return /[0-9] [a-zA-Z]/.test(s.textContent);})
  .map(function(s){return s.textContent;});
out.broken_numbers=[];var r=document.createRange();
[].forEach.call(spans,function(s){var n=s.firstChild;if(!n||n.nodeType!==3){return;}
  var re=/-?[0-9.]+\u00a0[a-zA-Z]+/g,m;while((m=re.exec(n.data))){r.setStart(n,m.index);
  r.setEnd(n,m.index+m[0].length);if(r.getClientRects().length>1){out.broken_numbers.push(m[0]);}}});
out.cards=[].map.call(document.querySelectorAll('article.failed'),function(a){return a.innerText;});
var audio=document.querySelectorAll('audio'),left=audio.length;
function done(){out.durations=[].map.call(audio,function(a){return isFinite(a.duration)?a.duration:null;});
  out.preload=[].map.call(audio,function(a){return a.preload;});resolve(out);}
if(!left){done();return;}
[].forEach.call(audio,function(a){function one(){if(--left===0){done();}}
  if(a.readyState>=1){one();}else{a.addEventListener('loadedmetadata',one);a.addEventListener('error',one);}});
setTimeout(done,20000);
})"""


class DevTools:
    """Chromium driven over --remote-debugging-pipe (fds 3 and 4, NUL-terminated JSON): the one
    way to lay a page out narrower than a headless window's 500 px minimum."""

    def __init__(self, profile: str) -> None:
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()

        def fds() -> None:
            # Through fresh numbers first: either pipe end may itself be fd 3 or 4.
            a, b = os.dup(to_child), os.dup(from_child)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(3, 4),  # kept open past the exec: subprocess closes the rest after fds()
            preexec_fn=fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        self._id = 0

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params: Any) -> dict:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        return self.wait(lambda m: m.get("id") == self._id, timeout)["result"]

    def wait(self, match: Any, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                m = json.loads(raw)
                if "error" in m and m.get("id") == self._id:
                    raise AssertionError(m["error"])
                if match(m):
                    return m
            assert time.monotonic() < deadline, "Chromium did not answer"
            ready, _, _ = select.select([self._read], [], [], 1.0)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                assert chunk, "Chromium closed its pipe"
                self._buf += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)


def computed(page: Path, width: int) -> dict[str, Any]:
    """The page as Chromium lays it out in a viewport `width` CSS pixels wide (a phone's below
    500), measured by PROBE."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cdp = DevTools(profile)
        try:
            target = next(
                t["targetId"] for t in cdp.call("Target.getTargets")["targetInfos"] if t["type"] == "page"
            )
            session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            cdp.call(
                "Emulation.setDeviceMetricsOverride",
                session,
                width=width,
                height=1200,
                deviceScaleFactor=1,
                mobile=width < 500,
            )
            cdp.call("Page.enable", session)
            cdp.call("Page.navigate", session, url=page.resolve().as_uri())
            cdp.wait(lambda m: m.get("method") == "Page.loadEventFired")
            got = cdp.call(
                "Runtime.evaluate", session, expression=PROBE, awaitPromise=True, returnByValue=True
            )
        finally:
            cdp.close()
    return got["result"]["value"]


@pytest.mark.parametrize("width", [1400, 400])
def test_page_styles_and_players_as_chromium_computes_them(finished_run: dict[str, Any], width: int) -> None:
    got = computed(finished_run["page"], width)
    assert got["width"] == width, got["wide"]  # a phone widens its viewport to fit what overflows
    # Every rule of the stylesheet reached the browser: prompts keep their line breaks, folder
    # headings have their own size, failures their red edge.
    assert got["prompt_white_space"] == "pre-wrap"
    assert got["group_font_size"] == "16.1px", got  # 1.15em of 14px
    assert got["failed_border"] == "rgb(204, 51, 51)"
    # Units stay with their numbers; nothing is wider than the screen.
    assert got["split_units"] == [], "a unit after a breakable space"
    assert got["broken_numbers"] == []
    assert got["overflow"] <= 0
    # Players read the length of their file before anyone presses play.
    assert got["preload"] and set(got["preload"]) == {"metadata"}
    assert all(d is not None and d > 0.3 for d in got["durations"]), got["durations"]
    # Failure cards: the hint once, no "None", a cancelled job not told twice that it was cancelled.
    cards = {c.split()[0]: c for c in got["cards"]}
    assert set(cards) == {"nomodel", "noref", "changed-mind"}, cards
    for text in cards.values():
        assert "None" not in text and text.count("hint:") <= 1
    noref = cards["noref"]
    hint = noref.split("hint:")[1].splitlines()[0].strip()
    assert hint and noref.count(hint) == 1, noref
    assert cards["changed-mind"].count("cancelled") == 2, cards["changed-mind"]  # status, and why
