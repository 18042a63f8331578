"""The `analysis` block of each output: the written audio measured (daemon.audio.analysis) and set
against what the job asked. Runs in the publisher's thread, after the file is written."""

from __future__ import annotations

import html
from typing import Any

from daemon.audio.analysis import Measured, analyze
from daemon.core.pcm import Clip
from jobspec import Job
from jobspec.analysis import Analysis, Asked, key_relation


def asked_against(measured: Measured, job: Job) -> Asked | None:
    """How far `measured` is from the job's bpm, key and time_signature; None when none is asked."""
    if job.bpm is None and job.key is None and job.time_signature is None:
        return None
    error = None
    if job.bpm is not None and measured.tempo_bpm is not None:
        error = round(measured.tempo_bpm - job.bpm, 2)
    relation = None
    if job.key is not None and measured.key is not None:
        relation = key_relation(measured.key, job.key)
    return Asked(
        bpm=job.bpm,
        tempo_error_bpm=error,
        key=job.key,
        key_relation=relation,
        time_signature=job.time_signature,
    )


def to_sidecar(measured: Measured, job: Job) -> Analysis:
    lra = measured.loudness_range_lu
    return Analysis(
        tempo_bpm=None if measured.tempo_bpm is None else round(measured.tempo_bpm, 2),
        tempo_confidence=round(measured.tempo_confidence, 3),
        key=measured.key,
        key_confidence=round(measured.key_confidence, 3),
        beats_s=measured.beats_s,
        downbeats_s=measured.downbeats_s,
        loudness_range_lu=None if lra is None else round(lra, 2),
        asked=asked_against(measured, job),
    )


def measure(audio: Clip, sample_rate: int, job: Job) -> Analysis:
    """The sidecar's analysis of one written output (`audio`: its file, read block by block)."""
    return to_sidecar(analyze(audio, sample_rate, job.time_signature), job)


def measures_html(output: dict[str, Any]) -> str:
    """What the page shows beside an output's player: " · 120.0 BPM · A minor" as escaped spans;
    nothing for a sidecar written before outputs were measured."""
    a = output.get("analysis")
    if not isinstance(a, dict):
        return ""
    tempo = a.get("tempo_bpm")
    shown = {
        # No-break spaces, as the page's other figures: a unit never wraps away from its number.
        "tempo": f"{tempo:.1f}\u00a0BPM" if isinstance(tempo, (int, float)) else "tempo\u00a0n/a",
        "key": str(a.get("key") or "key n/a").replace(" ", "\u00a0"),
    }
    return "".join(f' · <span class="{c}">{html.escape(v)}</span>' for c, v in shown.items())
