"""state/metrics.prom's text, read back by Prometheus' own parser."""

from __future__ import annotations

import pytest

from daemon.service.metrics import Gauges, Metrics, metrics_file_name

parser = pytest.importorskip("prometheus_client.parser")


def test_exposition_parses_with_counts_histograms_and_escaped_labels() -> None:
    m = Metrics(version="1.2.3", device="cpu", hostname='box "1"\\n', start_time=1_700_000_000.5)
    sidecar = {
        "timings": {"generate_s": 3.0, "total_s": 4.0},
        "rtf": 0.75,
        "outputs": [{"duration_s": 2.0}, {"duration_s": 2.0}],
    }
    m.observe({"status": "completed"}, sidecar)
    m.observe(
        {"status": "completed"}, {**sidecar, "timings": {"generate_s": 100.0, "total_s": 700.0}, "rtf": 25.0}
    )
    m.observe({"status": "failed", "error": "timeout"}, None)
    m.observe({"status": "cancelled", "error": "cancelled"}, None)
    text = m.render(
        Gauges(
            queue_length=3, jobs_running=1, models={"small": True, "big": False}, model_load_s={"small": 12.5}
        )
    )
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    jobs = {(s.labels["outcome"], s.labels["error_type"]): s.value for s in fams["dgx_music_jobs"].samples}
    assert jobs == {("completed", ""): 2, ("failed", "timeout"): 1, ("cancelled", "cancelled"): 1}
    gen = {(s.name, s.labels.get("le")): s.value for s in fams["dgx_music_generation_seconds"].samples}
    assert gen[("dgx_music_generation_seconds_bucket", "5.0")] == 1
    assert gen[("dgx_music_generation_seconds_bucket", "120.0")] == 2
    assert gen[("dgx_music_generation_seconds_bucket", "+Inf")] == 2
    assert gen[("dgx_music_generation_seconds_sum", None)] == 103.0
    job = {
        s.labels.get("le"): s.value
        for s in fams["dgx_music_job_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert job["600.0"] == 1 and job["1800.0"] == 2
    assert fams["dgx_music_audio_seconds"].samples[0].value == 8.0
    assert {s.labels["model"]: s.value for s in fams["dgx_music_model_loaded"].samples} == {
        "small": 1,
        "big": 0,
    }
    assert fams["dgx_music_queue_length"].samples[0].value == 3
    rtf = {
        s.labels.get("le"): s.value for s in fams["dgx_music_rtf_ratio"].samples if s.name.endswith("_bucket")
    }
    assert rtf["1.0"] == 1 and rtf["+Inf"] == 2 and fams["dgx_music_rtf_ratio"].type == "histogram"
    assert "# TYPE dgx_music_jobs_total counter" in text and "dgx_music_rtf_ratio_sum" in text
    info = fams["dgx_music_info"].samples[0]
    assert info.labels["hostname"] == 'box "1"\\n' and info.labels["version"] == "1.2.3"
    assert all(s.labels["device"] == "cpu" for f in fams.values() for s in f.samples)
    assert m.seconds_per_audio_second() == pytest.approx(103.0 / 8.0)


def test_file_name_per_pinned_gpu() -> None:
    assert metrics_file_name("auto") == "metrics.prom" == metrics_file_name("cuda")
    assert metrics_file_name("cuda:1") == "metrics.cuda1.prom"


def test_speeds_and_audio_are_labelled_by_model_family() -> None:
    m = Metrics(version="1", device="cpu", hostname="box", start_time=1.0)
    song = {
        "timings": {"generate_s": 2.0, "total_s": 3.0},
        "rtf": 0.1,
        "outputs": [{"duration_s": 20.0}],
        "model": {"family": "ace-step"},
    }
    m.observe({"status": "completed"}, song)
    m.observe({"status": "completed"}, {**song, "model": {"family": "musicgen"}, "rtf": 2.0})
    text = m.render(Gauges(queue_length=0, jobs_running=0, models={}, model_load_s={}))
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    audio = {s.labels["family"]: s.value for s in fams["dgx_music_audio_seconds"].samples}
    assert audio == {"ace-step": 20.0, "musicgen": 20.0}
    counts = {
        s.labels["family"]: s.value for s in fams["dgx_music_rtf_ratio"].samples if s.name.endswith("_count")
    }
    assert counts == {"ace-step": 1, "musicgen": 1}
    buckets = {
        (s.labels["family"], s.labels["le"]): s.value
        for s in fams["dgx_music_rtf_ratio"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets[("ace-step", "0.1")] == 1 and buckets[("musicgen", "1.5")] == 0
