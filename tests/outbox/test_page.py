"""outbox/index.html from sidecars on disk: escaping, links, limits, subfolders, debounce."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.outbox.page import CSP, PageRefresher, collect, render, write_page

EVIL = '<script>alert(1)</script> & "quotes" \'single\' <b onclick="x()">'


def result(
    job_id: str,
    prompt: str = "a tune",
    *,
    count: int = 1,
    finished: str = "2026-01-01T00:00:00.000Z",
    sections: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    names = [f"{job_id}.wav"] if count == 1 else [f"{job_id}-v{i}.wav" for i in range(1, count + 1)]
    request: dict[str, Any] = {"prompt": prompt, "duration": 1.0, "seed": 5, "model": "tiny"}
    if sections:
        request = {"sections": sections, "seed": 5, "model": "tiny"}
    return {
        "job_id": job_id,
        "status": "completed",
        "source_file": f"{job_id}.yaml",
        "finished": finished,
        "timings": {"queue_s": 0.1, "generate_s": 1.5, "total_s": 2.0},
        "rtf": 1.5,
        "request": request,
        "model": {"name": "tiny", "device": "cpu", "dtype": "float32"},
        "outputs": [
            {
                "path": n,
                "duration_s": 1.0,
                "integrated_lufs": -16.0,
                "true_peak_dbtp": -1.0,
                "variation": i + 1,
                "seed": 5 + i,
                "waveform": {"bins": 3, "min": [-0.5, -1.5, 0.0], "max": [0.5, 0.2, 0.1]},
            }
            for i, n in enumerate(names)
        ],
    }


def failure(job_id: str, message: str = "bad", hint: str | None = "fix it") -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": "failed",
        "source_file": f"{job_id}.yaml",
        "finished": "2026-01-02T00:00:00.000Z",
        "error": {
            "type": "invalid_job",
            "message": message,
            "details": [{"loc": "prompt", "line": 2, "msg": EVIL}],
            "hint": hint,
        },
        "attempts": 1,
    }


def put(path: Path, body: dict[str, Any], mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def spool(tmp_path: Path) -> tuple[Path, Path]:
    outbox, failed = tmp_path / "outbox", tmp_path / "failed"
    outbox.mkdir()
    failed.mkdir()
    return outbox, failed


def test_everything_from_a_job_is_escaped(spool: tuple[Path, Path]) -> None:
    outbox, failed = spool
    put(outbox / "a.json", result("a", EVIL, count=2))
    put(failed / "b.error.json", failure("b", message=EVIL, hint=EVIL))
    text = write_page(outbox, failed).read_text()
    assert "<script>alert" not in text and "<b onclick" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot; &#x27;single&#x27;" in text
    assert len(re.findall(r"<script>", text)) == 1  # the page's own
    assert text.count("<audio controls") == 2
    assert 'src="a-v1.wav"' in text and 'href="../failed/b.yaml"' in text


def test_sections_are_listed_and_waveform_is_svg(spool: tuple[Path, Path]) -> None:
    outbox, failed = spool
    put(
        outbox / "s.json",
        result("s", sections=[{"prompt": "intro <i>", "duration": 8}, {"prompt": "drop", "duration": 8}]),
    )
    text = write_page(outbox, failed).read_text()
    assert "<li>intro &lt;i&gt;" in text and "drop" in text
    svg = re.search(r'<svg class="wave" viewBox="0 0 3 2"[^>]*><path d="([^"]+)"/></svg>', text)
    assert svg is not None
    # Values outside -1..1 are clipped to the box: 1 - (-1.5 -> -1) = 2.
    assert "2.000" in svg.group(1) and "-" not in svg.group(1)


def test_newest_first_limit_and_folders(spool: tuple[Path, Path]) -> None:
    outbox, failed = spool
    now = time.time()
    for i in range(5):
        put(
            outbox / f"j{i}.json",
            result(f"j{i}", finished=f"2026-01-01T00:00:0{i}.000Z"),
            mtime=now - 100 + i,
        )
    put(outbox / "band" / "k.json", result("k", finished="2026-01-01T00:00:09.000Z"), mtime=now)
    put(failed / "band" / "z.error.json", failure("z"), mtime=now - 1000)
    (outbox / "index.html").write_text("old page")  # never taken for a sidecar
    (outbox / ".j9.json.tmp").write_text("{")  # temp files neither
    entries, total = collect(outbox, failed, max_jobs=3)
    assert total == 7
    assert [e.body["job_id"] for e in entries] == ["k", "j4", "j3"]
    assert entries[0].folder == "band" and entries[0].sidecar_href == "band/k.json"
    page = render(entries, total)
    assert 'src="band/k.wav"' in page and "4 older ones are on disk" in page
    assert '<option value="band">' in page
    inbox_group, band_group = page.index('data-folder=""><h2'), page.index('data-folder="band"><h2')
    assert inbox_group < band_group  # grouped by folder: the inbox's own jobs first
    all_entries, _ = collect(outbox, failed, max_jobs=100)
    z = next(e for e in all_entries if e.body["job_id"] == "z")
    assert z.sidecar_href == "../failed/band/z.error.json"


def test_csp_admits_only_the_pages_own_script_and_style() -> None:
    assert "script-src 'sha256-" in CSP and "unsafe-inline" not in CSP and "default-src 'none'" in CSP


def test_refresher_debounces_and_writes_once_more_after_a_burst(spool: tuple[Path, Path]) -> None:
    outbox, failed = spool
    page = PageRefresher(outbox, failed, min_interval_s=2.0)
    assert page.tick(100.0) is False  # nothing marked
    for i in range(10):  # a burst within one interval: one write now, one at its end
        put(outbox / f"b{i}.json", result(f"b{i}"))
        page.mark()
        page.tick(100.0 + i * 0.1)
    assert page.writes == 1
    assert page.tick(101.5) is False
    assert page.tick(102.1) is True and page.writes == 2
    assert page.tick(110.0) is False  # quiet: no more writes
    assert (outbox / "index.html").read_text().count("<article") == 10


def test_page_name_squatted_by_a_folder_is_refused_with_a_remedy_and_a_link_is_replaced(
    tmp_path: Path,
) -> None:
    outbox, failed = tmp_path / "outbox", tmp_path / "failed"
    failed.mkdir()
    (outbox / "index.html").mkdir(parents=True)
    (outbox / "index.html" / "old.json").write_text("{}")
    with pytest.raises(OSError, match="is a directory, not the page.*move it away"):
        write_page(outbox, failed)
    assert (outbox / "index.html" / "old.json").exists()  # results of an older version are kept
    os.rename(outbox / "index.html", outbox / "index.html.old")
    outside = tmp_path / "outside.html"
    outside.write_text("not the daemon's")
    os.symlink(outside, outbox / "index.html")
    page = write_page(outbox, failed)
    assert not page.is_symlink() and "dgx-music outbox" in page.read_text()
    assert outside.read_text() == "not the daemon's"
