"""Loops from synthetic drums whose tempo is known: exactly N bars of samples at the asked tempo
(the tiled loop measures it), the wrap within the seam limits, by an independent check too."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.audio.analysis import analyze
from daemon.audio.loop import make_loop
from tests.audio.synthmusic import RATE, click_track, drum_pattern


@pytest.mark.parametrize(
    ("played", "asked", "bars", "ts"),
    [(117.0, 120, 2, None), (120.0, 120, 1, None), (100.0, 96, 4, None), (90.0, 93, 2, "3/4")],
)
def test_loop_is_n_bars_at_the_asked_tempo_and_seamless(
    played: float, asked: int, bars: int, ts: str | None
) -> None:
    beats = 3 if ts == "3/4" else 4
    if ts == "3/4":  # a waltz metronome: accented first beats
        audio = np.stack([click_track(played, 14.0, beats_per_bar=3)] * 2)
    else:
        audio = np.stack([drum_pattern(played, 14.0), drum_pattern(played, 14.0, seed=1)])
    loop = make_loop(audio, RATE, bpm=asked, bars=bars, time_signature=ts)
    assert loop.audio.shape == (2, round(bars * beats * 60 / asked * RATE))
    assert loop.stretch == pytest.approx(asked / played, rel=0.01)
    # Played four times over, the loop keeps the asked tempo: no gap or overlap at the wrap.
    tiled = analyze(np.tile(loop.audio, (1, 4)), RATE, ts)
    assert tiled.tempo_bpm == pytest.approx(asked, abs=0.5)
    assert loop.seam.seamless, loop.seam
    # Independently: the wrap's sample jump is no larger than the steps inside the loop.
    steps = np.abs(np.diff(loop.audio, axis=1))
    assert np.max(np.abs(loop.audio[:, -1] - loop.audio[:, 0])) <= np.percentile(steps, 99)


def test_noise_without_a_tempo_still_loops_to_the_exact_length() -> None:
    noise = np.random.default_rng(0).standard_normal((1, RATE * 6)).astype(np.float32) * 0.1
    loop = make_loop(noise, RATE, bpm=120, bars=2, time_signature=None)
    assert loop.audio.shape == (1, 4 * RATE) and loop.seam.seamless
