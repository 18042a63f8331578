"""The benchmark: rows, verdict thresholds, the progress bar and the CLI on the tiny model."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable

import pytest

from daemon.core.config import Settings
from daemon.core.messages import Progress
from daemon.engine.model import MusicEngine
from daemon.ops.bench import (
    BenchReport,
    BenchRow,
    ProgressBar,
    bench_backend,
    exit_code,
    format_report,
    run_benchmark,
    verdict_for,
    verdict_from_rows,
)


def _row(duration: float, gen_s: float, batch: int = 1) -> BenchRow:
    return BenchRow("transformers", "m", batch, duration, gen_s, gen_s / (duration * batch), 0)


@pytest.mark.parametrize(
    ("gen_s", "label"),
    [
        (0.5, "EXCELLENT"),
        (29.99, "EXCELLENT"),
        (30.0, "ACCEPTABLE"),
        (60.0, "ACCEPTABLE"),
        (60.01, "BLOCKER"),
    ],
)
def test_verdict_thresholds(gen_s: float, label: str) -> None:
    v = verdict_for(gen_s)
    assert v.label == label and v.blocker == (label == "BLOCKER")
    report = BenchReport(
        model={}, device="cpu", rows=[_row(16, gen_s)], verdict=verdict_from_rows([_row(16, gen_s)])
    )
    assert exit_code(report) == (1 if label == "BLOCKER" else 0)


def test_verdict_uses_the_16s_clip_or_scales_the_longest() -> None:
    exact = verdict_from_rows([_row(4, 1.0), _row(16, 45.0), _row(30, 200.0)])
    assert exact is not None and exact.label == "ACCEPTABLE" and not exact.estimated
    est = verdict_from_rows([_row(4, 1.0), _row(8, 40.0)])  # RTF 5 -> 80 s for 16 s
    assert (
        est is not None and est.estimated and est.gen_s_16 == pytest.approx(80.0) and est.label == "BLOCKER"
    )
    assert verdict_from_rows([]) is None


def test_run_benchmark_on_the_tiny_model(make_settings: Callable[..., Settings]) -> None:
    engine = MusicEngine(make_settings(decoder="transformers"))
    seen: list[tuple[float, Progress]] = []
    report = run_benchmark(engine, [0.5, 1.0], progress=lambda d, p: seen.append((d, p)))
    assert [r.duration_s for r in report.rows] == [0.5, 1.0]
    for r in report.rows:
        assert r.engine == "transformers" and r.model == "tiny" and r.batch == 1
        assert r.gen_s > 0 and r.rtf == pytest.approx(r.gen_s / r.duration_s)
        assert r.steps == round(r.duration_s * 40) + 3 and r.ms_per_step > 0
        # The job's own rise of the resident set: zero is honest where the decode reused pages an
        # earlier test freed (the window itself is checked in test_doctor with a fresh mapping).
        assert isinstance(r.peak_memory_bytes, int) and r.peak_memory_bytes >= 0
    assert report.verdict is not None and report.verdict.estimated
    assert {d for d, _ in seen} == {0.5, 1.0} and seen[-1][1].fraction == 1.0
    text = format_report(report)
    assert "verdict: EXCELLENT" in text and "within the 30 GiB budget" in text
    assert engine.get_stats().jobs == 2


def test_bench_backend_rows_count_every_row(make_settings: Callable[..., Settings]) -> None:
    engine = MusicEngine(make_settings(decoder="transformers"))
    rows = bench_backend(engine, [0.25], batch=2)
    assert len(rows) == 1 and rows[0].batch == 2 and rows[0].rtf == pytest.approx(rows[0].gen_s / 0.5)
    assert rows[0].as_dict()["audio_s_per_s"] == pytest.approx(0.5 / rows[0].gen_s)
    assert rows[0].engine == "transformers"


def test_progress_bar_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(out)
    for done in range(1, 11):
        bar(4.0, Progress(done, 10, done * 0.1))
    lines = out.getvalue().splitlines()
    assert lines[-1] == "  4.0 s clip done in 1.00 s"
    assert len(lines) <= 3  # not a line per step when nobody watches a terminal


def test_cli_bench_tiny_json(capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.commands import bench

    parser = argparse.ArgumentParser(prog="dgx-music")
    bench.register(parser.add_subparsers())
    args = parser.parse_args(
        ["bench", "--tiny", "--durations", "0.5,1", "--decoder", "transformers", "--device", "cpu", "--json"]
    )
    assert args.func(args) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert [r["duration_s"] for r in doc["rows"]] == [0.5, 1.0]
    assert doc["model"]["name"] == "tiny" and doc["verdict"]["label"] == "EXCELLENT"
    assert "clip done in" in captured.err
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--durations", "4,-1"])


def test_cli_bench_compare_json(capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.commands import bench

    parser = argparse.ArgumentParser(prog="dgx-music")
    bench.register(parser.add_subparsers())
    args = parser.parse_args(
        ["bench", "--tiny", "--compare", "--durations", "0.5", "--batch", "2", "--device", "cpu", "--json"]
    )
    assert args.func(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["engine"] for r in rows) == ["dgx-music", "transformers"]
    for r in rows:
        assert {"engine", "model", "batch", "duration_s", "gen_s", "rtf", "peak_memory_bytes"} <= set(r)
        assert r["batch"] == 2 and r["duration_s"] == 0.5 and r["model"] == "tiny"
        assert r["gen_s"] > 0
        assert r["rtf"] == pytest.approx(
            r["gen_s"] / 0.5, rel=0.01, abs=1e-3
        )  # per clip: the batch runs in parallel
