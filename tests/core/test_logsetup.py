"""Logging: the job context in plain lines and as journal fields; journal detection."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.core.logctx import (
    MESSAGE_ID_JOB_COMPLETED,
    JobContextFilter,
    current_context,
    job_context,
    message_id,
    set_stage,
    update_context,
)
from daemon.service import journal as logsetup
from daemon.service.journal import journal_stream_matches, make_journal_handler, setup_logging

HAVE_JOURNAL = logsetup._sd_journal is not None
LINE_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|DEBUG|ERROR) (\[[^\]]*\] )?.*$")


@pytest.fixture
def clean_root() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for h in list(root.handlers):
        if hasattr(h, "_dgx_music"):
            root.removeHandler(h)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_plain_format_carries_the_job_context(clean_root: None) -> None:
    out = io.StringIO()
    setup_logging("INFO", stream=out, journal=False)
    log = logging.getLogger("dgx.test")
    log.info("waiting for jobs")
    with job_context("abc", model="small", stage="generate"):
        log.info("step %d", 3)
        set_stage("postprocess")
        log.warning("clipped")
    log.debug("hidden at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert all(LINE_RE.match(line) for line in lines), lines
    assert lines[0].endswith(" INFO waiting for jobs")
    assert lines[1].endswith(" INFO [job abc/small/generate] step 3")
    assert lines[2].endswith(" WARNING [job abc/small/postprocess] clipped")


def test_context_nests_and_restores() -> None:
    assert current_context().label() == ""
    with job_context(model="small", stage="load"):
        assert current_context().label() == "small/load"
        with job_context("j1", stage="generate"):
            assert current_context().label() == "job j1/small/generate"
            update_context(model="medium")
            assert current_context().model == "medium"
        assert current_context().label() == "small/load"
    assert current_context().label() == ""
    with pytest.raises(TypeError, match="colour"):
        update_context(colour="red")


def test_filter_sets_upper_case_fields_and_explicit_extra_wins() -> None:
    flt = JobContextFilter()
    with job_context("abc", model="small", stage="generate"):
        rec = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        assert flt.filter(rec)
        assert (rec.DGX_MUSIC_JOB_ID, rec.DGX_MUSIC_MODEL, rec.DGX_MUSIC_STAGE) == (
            "abc",
            "small",
            "generate",
        )  # type: ignore[attr-defined]
        assert rec.dgx_context == "[job abc/small/generate] "  # type: ignore[attr-defined]
        rec2 = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        rec2.DGX_MUSIC_JOB_ID = "other"  # as logging does for extra={"DGX_MUSIC_JOB_ID": ...}
        flt.filter(rec2)
        assert rec2.DGX_MUSIC_JOB_ID == "other"  # type: ignore[attr-defined]
        assert rec2.dgx_context == "[job other/small/generate] "  # type: ignore[attr-defined]
    rec3 = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    flt.filter(rec3)
    assert not hasattr(rec3, "DGX_MUSIC_JOB_ID")  # no "DGX_MUSIC_JOB_ID=None" fields outside a job
    assert not hasattr(rec, "JOB_ID")  # systemd's own field is never set
    assert rec3.dgx_context == ""  # type: ignore[attr-defined]


def test_context_is_per_thread(clean_root: None) -> None:
    out = io.StringIO()
    setup_logging("INFO", stream=out, journal=False)
    log = logging.getLogger("dgx.test")
    started = threading.Event()
    release = threading.Event()

    def worker() -> None:
        with job_context("w1", model="small", stage="generate"):
            log.info("in worker")
            started.set()
            release.wait(5)
            log.info("worker again")

    with job_context("main-job"):
        t = threading.Thread(target=worker)
        t.start()
        assert started.wait(5)
        log.info("in main")
        release.set()
        t.join(5)
    text = out.getvalue()
    assert "[job w1/small/generate] in worker" in text
    assert "[job w1/small/generate] worker again" in text
    assert "[job main-job] in main" in text


@pytest.mark.skipif(not HAVE_JOURNAL, reason="systemd-python not installed")
def test_journal_handler_sends_fields(clean_root: None) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def sender(MESSAGE: str, **fields: Any) -> None:  # noqa: N803 - journal.send's signature
        sent.append((MESSAGE, fields))

    handler = make_journal_handler(sender_function=sender)
    handler.addFilter(JobContextFilter())
    log = logging.getLogger("dgx.journal")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with job_context("abc", model="small", stage="generate"):
            log.info("%d%% done", 43)
            log.info("job abc completed", extra=message_id(MESSAGE_ID_JOB_COMPLETED))
        log.info("idle")
    finally:
        log.removeHandler(handler)
    (msg, fields), (_, done), (msg2, fields2) = sent
    assert msg == "[job abc/small/generate] 43% done"
    assert (fields["DGX_MUSIC_JOB_ID"], fields["DGX_MUSIC_MODEL"], fields["DGX_MUSIC_STAGE"]) == (
        "abc",
        "small",
        "generate",
    )
    assert "JOB_ID" not in fields and "MESSAGE_ID" not in fields
    assert (
        done["MESSAGE_ID"] == MESSAGE_ID_JOB_COMPLETED and len(bytes.fromhex(MESSAGE_ID_JOB_COMPLETED)) == 16
    )
    assert fields["SYSLOG_IDENTIFIER"] == "dgx-music"
    assert fields["CODE_FILE"] == __file__ and isinstance(fields["CODE_LINE"], int)
    assert fields["PRIORITY"] == "6"
    assert msg2 == "idle" and "DGX_MUSIC_JOB_ID" not in fields2


def test_journal_stream_detection(tmp_path: Path) -> None:
    f = (tmp_path / "stderr").open("w")
    try:
        st = os.fstat(f.fileno())
        assert journal_stream_matches(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not journal_stream_matches(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not journal_stream_matches(f, {"JOURNAL_STREAM": "garbage"})
        assert not journal_stream_matches(f, {})
        assert not journal_stream_matches(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
    finally:
        f.close()


def _run_child(stderr_path: Path, journal_stream: str | None, code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with stderr_path.open("w") as err:
        subprocess.run(
            [sys.executable, "-c", code],
            stderr=err,
            env=env,
            check=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[2],
        )
    return stderr_path.read_text()


SELECT_CODE = (
    "import logging, sys; from daemon.service.journal import setup_logging\n"
    "h = setup_logging('INFO')\n"
    "print(type(h).__name__, file=sys.stdout)\n"
    "sys.stdout.flush()\n"
)


def test_handler_selection_follows_journal_stream(tmp_path: Path) -> None:
    """A real child process whose stderr is a file: JOURNAL_STREAM naming that file's dev:ino
    selects the journal path; naming anything else keeps plain stderr."""
    stderr_file = tmp_path / "stderr"
    stderr_file.touch()
    st = os.stat(stderr_file)
    code = SELECT_CODE + "logging.getLogger('t').warning('hello')\n"
    match = f"{st.st_dev}:{st.st_ino}"

    plain = _run_child(stderr_file, None, code)
    assert re.search(r" WARNING hello$", plain.strip()), plain

    with stderr_file.open("w") as err:
        out = subprocess.run(
            [sys.executable, "-c", SELECT_CODE],
            stderr=err,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "JOURNAL_STREAM": match},
            check=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[2],
        )
    expected = "JournalHandler" if HAVE_JOURNAL else "StreamHandler"
    assert out.stdout.strip() == expected


def test_journal_stream_without_systemd_python_uses_priority_prefix(
    clean_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logsetup, "_sd_journal", None)
    out = io.StringIO()
    setup_logging("INFO", stream=out, journal=True)
    with job_context("abc"):
        logging.getLogger("t").error("failed")
    assert out.getvalue() == "<3>[job abc] failed\n"


def test_setup_twice_replaces_its_handler(clean_root: None) -> None:
    out1, out2 = io.StringIO(), io.StringIO()
    setup_logging("INFO", stream=out1, journal=False)
    h2 = setup_logging("DEBUG", stream=out2, journal=False)
    mine = [h for h in logging.getLogger().handlers if hasattr(h, "_dgx_music")]
    assert mine == [h2]
    logging.getLogger("t").debug("after reload")
    assert out1.getvalue() == "" and "DEBUG after reload" in out2.getvalue()
