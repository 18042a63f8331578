"""The peak envelope stored in sidecars: shape, values and its JSON form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from daemon.audio.waveform import peak_envelope
from daemon.outbox.publish import sidecar_json


def test_envelope_of_a_sine_mixes_channels_and_keeps_extremes() -> None:
    sr = 8000
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 100 * t)
    right = -left  # mixed: silence, so the envelope must be ~0, not the per-channel peak
    env = peak_envelope(np.stack([left, left]), bins=200)
    assert env.bins == 200 and len(env.max) == 200
    assert max(env.max) == pytest.approx(0.5, abs=1e-3)
    assert min(env.min) == pytest.approx(-0.5, abs=1e-3)
    assert all(lo <= hi for lo, hi in zip(env.min, env.max))
    cancelled = peak_envelope(np.stack([left, right]), bins=50)
    assert max(abs(v) for v in cancelled.max + cancelled.min) < 1e-3


def test_envelope_of_a_short_clip_has_one_bin_per_sample_and_empty_is_empty() -> None:
    env = peak_envelope(np.array([[0.1, -0.2, 0.3]]), bins=400)
    assert env.bins == 3 and env.min == [0.1, -0.2, 0.3] and env.max == env.min
    assert peak_envelope(np.zeros((2, 0))).bins == 0
    with pytest.raises(ValueError):
        peak_envelope(np.zeros(10), bins=0)


def test_sidecar_json_puts_number_arrays_on_one_line_and_leaves_strings_alone() -> None:
    body = {
        "prompt": "[1, 2]\n not a list",
        "outputs": [{"waveform": {"bins": 3, "min": [-0.5, 0.0, 1e-05], "max": [1, 2, 3]}}],
    }
    text = sidecar_json(body)
    assert json.loads(text) == body
    assert '"min": [-0.5,0.0,1e-05]' in text and '"max": [1,2,3]' in text
    assert text.count("\n") < 20
