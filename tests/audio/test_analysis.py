"""The analysis against a truth the tests build: click tracks and drum patterns (straight and
swung) at known tempi, chord progressions in known keys, steady and stepped loudness."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.audio.analysis import analyze, loudness_range
from jobspec.analysis import key_relation
from jobspec.music import key_name
from tests.audio.synthmusic import PROGRESSIONS, RATE, chord_progression, click_track, drum_pattern

# 70..180 BPM, off the round numbers too (the period is rarely a whole number of frames).
TEMPI = [70, 76.5, 84, 91, 99, 107.5, 116, 124, 133, 141.5, 150, 161, 170.5, 180]
KINDS = {
    "click": lambda bpm: click_track(bpm, 16.0),
    "drums": lambda bpm: drum_pattern(bpm, 16.0),
    "swing": lambda bpm: drum_pattern(bpm, 16.0, swing=2 / 3),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_tempo_within_one_bpm_from_70_to_180_octave_errors_are_misses(kind: str) -> None:
    errors = {}
    for bpm in TEMPI:
        m = analyze(KINDS[kind](bpm), RATE)
        assert m.tempo_bpm is not None, (kind, bpm)
        errors[bpm] = round(m.tempo_bpm - bpm, 3)
    misses = {b: e for b, e in errors.items() if abs(e) > 1.0}
    assert not misses, f"{kind}: tempo off by more than 1 BPM at {misses}"


def test_beats_fall_on_the_clicks_and_downbeats_on_the_accents() -> None:
    bpm = 96.0
    m = analyze(click_track(bpm, 16.0, beats_per_bar=4), RATE)
    period = 60.0 / bpm
    beats = np.array(m.beats_s)
    assert len(beats) >= 16 * bpm / 60 - 2
    # Every beat within 15 ms of a click (frames are 11.6 ms).
    assert np.max(np.abs(beats / period - np.round(beats / period))) * period < 0.015
    # Downbeats: every fourth beat, on the accented clicks (bar starts at 0, 2.5 s, 5 s, ...).
    bar = 4 * period
    down = np.array(m.downbeats_s)
    assert len(down) >= 5
    assert np.max(np.abs(down / bar - np.round(down / bar))) * bar < 0.015
    three = analyze(click_track(bpm, 16.0, beats_per_bar=3), RATE, "3/4")
    down3 = np.array(three.downbeats_s)
    assert np.max(np.abs(down3 / (3 * period) - np.round(down3 / (3 * period)))) * period * 3 < 0.015


def test_key_and_mode_of_chord_progressions_in_all_24_keys() -> None:
    """Two progressions a mode in every key (96 cases); the rule: at least 95 % exactly right, and a
    miss is at worst the relative key (the same notes: natural minor against its relative major)."""
    results = []
    for mode in ("major", "minor"):
        for name in PROGRESSIONS[mode]:
            for tonic in range(12):
                truth = key_name(tonic, mode)  # type: ignore[arg-type]
                m = analyze(chord_progression(tonic, mode, name), RATE)
                assert m.key is not None
                results.append((name, truth, m.key, key_relation(m.key, truth)))
    right = sum(r[3] == "same" for r in results)
    assert right / len(results) >= 0.95, [r for r in results if r[3] != "same"]
    assert all(r[3] in ("same", "relative") for r in results), [r for r in results if r[3] != "same"]


def test_confidence_separates_music_from_noise() -> None:
    rng = np.random.default_rng(3)
    noise = analyze(rng.standard_normal(RATE * 8).astype(np.float32) * 0.1, RATE)
    drums = analyze(drum_pattern(120, 8.0), RATE)
    assert drums.tempo_confidence > 0.6 > noise.tempo_confidence


def test_silence_and_a_short_clip_have_no_tempo_or_key() -> None:
    silent = analyze(np.zeros((2, RATE * 4), np.float32), RATE)
    assert (silent.tempo_bpm, silent.key, silent.beats_s, silent.loudness_range_lu) == (None, None, [], None)
    short = analyze(click_track(120, 0.1), RATE)
    assert short.tempo_bpm is None and short.loudness_range_lu is None


def test_loudness_range_of_a_steady_and_a_stepped_signal() -> None:
    t = np.arange(RATE * 20) / RATE
    tone = (0.2 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    assert loudness_range(tone, RATE) == pytest.approx(0.0, abs=0.1)
    # 10 s at one level, 10 s 12 dB quieter: EBU 3342's first test signal has an LRA of 10 LU at
    # 20 dB; here the step is 12 dB, within the relative gate, so the range is the step (less the
    # 3 s windows that straddle it, which the percentiles leave out).
    stepped = tone.copy()
    stepped[RATE * 10 :] *= 10 ** (-12 / 20)
    assert loudness_range(stepped, RATE) == pytest.approx(12.0, abs=0.5)
