"""After a real daemon run: outbox/index.html in a real headless Chromium, and
state/metrics.prom through Prometheus' own parser.

The run has a job with two variations whose prompt is hostile HTML, a plain job, and a job
that fails (unknown model). The page must list all three, give every output a player, link
only relatively, and show the prompt as text: the markup in it must not run or become elements.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProcess, SpoolView, job_yaml, wait_until, write_config

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
    with DaemonProcess(config, root / "daemon.log") as daemon:
        daemon.start()
        sp.drop("hostile.yaml", job_yaml(HOSTILE, duration=0.5, count=2, seed=7))
        sp.drop("plain.yaml", job_yaml("a calm little tune for the page", duration=0.5, seed=8))
        sp.drop("nomodel.yaml", job_yaml("this one names a model nobody has", duration=0.5, model="nope"))
        for job_id in ("hostile", "plain", "nomodel"):
            sp.wait_outcome(job_id, 120, alive=daemon)
        page = sp.outbox / "index.html"
        # Debounced: the page catches up within a couple of seconds of the last outcome.
        wait_until(
            lambda: page.exists() and all(j in page.read_text() for j in ("hostile", "plain", "nomodel")),
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
    assert expected == ["hostile-v1.wav", "hostile-v2.wav", "plain.wav"]
    audio = sorted(str(a.get("src")) for a in dom.find("audio"))
    assert audio == expected
    assert all("controls" in a for a in dom.find("audio"))
    for src in audio:
        assert (sp.outbox / src).is_file()
    assert len(dom.find("svg")) == len(expected), "a waveform per output"

    # The failure, with its type and hint.
    articles = [a for a in dom.find("article")]
    assert len(articles) == 3
    assert sum("failed" in str(a.get("class")) for a in articles) == 1
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

    # Newest first: the sidecars' finished times in page order only go down.
    order = [a.get("data-text", "") for a in articles]
    finished = [sidecars[next(j for j in sidecars if str(o).startswith(j))]["finished"] for o in order]
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
    assert jobs[("completed", "")] == len(completed) == 2
    assert jobs[("failed", "unknown_model")] == len(failed) == 1
    gen_count = next(s.value for s in samples("dgx_music_generation_seconds") if s.name.endswith("_count"))
    assert gen_count == 2
    audio = next(s.value for s in samples("dgx_music_audio_seconds") if s.name.endswith("_total"))
    assert audio == pytest.approx(sum(o["duration_s"] for b in completed for o in b["outputs"]), abs=0.01)
    assert families["dgx_music_rtf"].type == "histogram"
    # The file a stopped daemon leaves says so; nothing is queued or running any more.
    assert samples("dgx_music_up")[0].value == 0
    assert samples("dgx_music_queue_length")[0].value == 0
    assert samples("dgx_music_jobs_running")[0].value == 0
    loaded = {s.labels["model"]: s.value for s in samples("dgx_music_model_loaded")}
    assert loaded == {"tiny": 1}
    assert samples("dgx_music_gpu_memory_bytes")[0].value == 0  # CPU
    info = samples("dgx_music_info")[0]
    from daemon import __version__

    assert info.labels["version"] == __version__ and info.value == 1
    assert samples("dgx_music_start_time_seconds")[0].value > 1.6e9
