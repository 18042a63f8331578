"""The progress display of `submit --wait`: tqdm on a terminal, plain lines otherwise, one ETA."""

from __future__ import annotations

import io

from daemon.ops.progressbar import ProgressBar, format_eta


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal_one_per_change() -> None:
    out = io.StringIO()
    bar = ProgressBar("waiting", stream=out, plain_interval_s=60)
    bar.update(0.0, "queued #2", eta_s=30, status="queued #2")
    bar.update(0.0, "queued #2", eta_s=29, status="queued #2")  # no change worth a line
    bar.update(0.4, "running x 40%", eta_s=14, status="running x")
    bar.update(0.5, "running x 50%", eta_s=12, status="running x")  # figures only: no line
    bar.update(1.0, "running x 100%", eta_s=0, status="running x")  # the end always shows
    bar.close("done")
    lines = out.getvalue().splitlines()
    assert lines == [
        "waiting:   0.0% queued #2 eta 30s",
        "waiting:  40.0% running x 40% eta 14s",
        "waiting: 100.0% running x 100% eta 0s",
        "done",
    ]
    assert "\r" not in out.getvalue()


def test_tqdm_bar_on_a_terminal_shows_the_given_eta_only() -> None:
    out = Terminal()
    bar = ProgressBar("waiting", stream=out, min_interval_s=0)
    bar.update(0.25, "running x 25%", eta_s=125)
    bar.update(0.75, "running x 75%", eta_s=40)
    bar.close()
    text = out.getvalue()
    assert "\r" in text and "75.0%" in text and "eta 40s" in text and "eta 2min" in text
    assert text.count("eta") == 2  # tqdm's own remaining-time estimate is not drawn
    assert "<" not in text  # tqdm's elapsed<remaining field is off


def test_format_eta() -> None:
    assert format_eta(None) == "" and format_eta(-3) == "eta 0s"
    assert format_eta(89) == "eta 89s" and format_eta(600) == "eta 10min" and format_eta(7200) == "eta 2.0h"
