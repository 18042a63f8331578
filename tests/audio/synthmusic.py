"""Synthetic music with a known truth, built from scratch: click tracks and drum patterns at a
given tempo (straight or swung), chord progressions in a given key. The analysis is judged on them."""

from __future__ import annotations

import numpy as np

RATE = 32000


def _decay(n: int, tau_s: float) -> np.ndarray:
    return np.exp(-np.arange(n) / (tau_s * RATE)).astype(np.float32)


def _place(out: np.ndarray, at_s: float, sound: np.ndarray, gain: float = 1.0) -> None:
    i = int(round(at_s * RATE))
    if i >= len(out):
        return
    n = min(len(sound), len(out) - i)
    out[i : i + n] += gain * sound[:n]


def click_track(bpm: float, seconds: float, beats_per_bar: int = 4) -> np.ndarray:
    """A metronome: 1.5 kHz clicks on every beat, 2.5 kHz and louder on each bar's first."""
    out = np.zeros(int(seconds * RATE), np.float32)
    n = int(0.03 * RATE)
    t = np.arange(n) / RATE
    for b in range(int(seconds * bpm / 60) + 1):
        f, g = (2500.0, 1.0) if b % beats_per_bar == 0 else (1500.0, 0.6)
        _place(out, b * 60.0 / bpm, np.sin(2 * np.pi * f * t).astype(np.float32) * _decay(n, 0.006), g)
    return out


def drum_pattern(bpm: float, seconds: float, *, swing: float = 0.5, seed: int = 0) -> np.ndarray:
    """Kick on 1 and 3, snare on 2 and 4, hi-hat on every eighth; `swing` places the off-beat eighth
    at that fraction of the beat (0.5 straight, 2/3 a triplet swing)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE), np.float32)
    nk = int(0.25 * RATE)
    t = np.arange(nk) / RATE
    kick = np.sin(2 * np.pi * (45 * t + 60 * 0.04 * (1 - np.exp(-t / 0.04)))).astype(np.float32) * _decay(
        nk, 0.08
    )
    ns = int(0.15 * RATE)
    snare = (rng.standard_normal(ns).astype(np.float32) * 0.6 + np.sin(2 * np.pi * 190 * t[:ns])) * _decay(
        ns, 0.04
    )
    nh = int(0.05 * RATE)
    hat = np.diff(rng.standard_normal(nh + 1)).astype(np.float32) * _decay(nh, 0.008)
    beat = 60.0 / bpm
    for b in range(int(seconds / beat) + 1):
        at = b * beat
        _place(out, at, kick if b % 2 == 0 else snare, 0.9 if b % 2 == 0 else 0.7)
        _place(out, at, hat, 0.25)
        _place(out, at + swing * beat, hat, 0.18)
    return out / max(1e-9, float(np.abs(out).max()))


def _note(midi: float, n: int) -> np.ndarray:
    f = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(n) / RATE
    tone = sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, 7) if k * f < RATE / 2)
    return (np.asarray(tone, np.float32) * _decay(n, 0.6)).astype(np.float32)


# (root, triad intervals) per chord, from the key's tonic.
PROGRESSIONS = {
    "major": {
        "I-IV-V-I": [(0, (0, 4, 7)), (5, (0, 4, 7)), (7, (0, 4, 7)), (0, (0, 4, 7))],
        "I-vi-IV-V-I": [(0, (0, 4, 7)), (9, (0, 3, 7)), (5, (0, 4, 7)), (7, (0, 4, 7)), (0, (0, 4, 7))],
    },
    "minor": {
        # The dominant with the harmonic minor's leading tone.
        "i-iv-V-i": [(0, (0, 3, 7)), (5, (0, 3, 7)), (7, (0, 4, 7)), (0, (0, 3, 7))],
        # Natural minor only: the same notes as the relative major's, told apart by where it rests.
        "i-VI-III-VII-i": [(0, (0, 3, 7)), (8, (0, 4, 7)), (3, (0, 4, 7)), (10, (0, 4, 7)), (0, (0, 3, 7))],
    },
}


def chord_progression(
    tonic: int, mode: str, name: str | None = None, seconds_per_chord: float = 1.0
) -> np.ndarray:
    """A progression of root-position triads, each over its root an octave down, in the key whose
    tonic is pitch class `tonic` (the first of PROGRESSIONS[mode] unless `name`)."""
    chords = PROGRESSIONS[mode][name or next(iter(PROGRESSIONS[mode]))]
    n = int(seconds_per_chord * RATE)
    out = np.zeros(n * len(chords), np.float32)
    base = 48 + tonic  # C3..B3 as the chord roots' register
    for i, (root, intervals) in enumerate(chords):
        seg = _note(base + root - 12, n) * 0.8
        for iv in intervals:
            seg += _note(base + root + iv, n) * 0.5
        out[i * n : (i + 1) * n] = seg
    return out / float(np.abs(out).max())
