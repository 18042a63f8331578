"""Codes become audio window by window (daemon.engine.decoding.codec): the joins are seamless
(the same samples as one whole-signal decode, to float rounding), mono and stereo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import MusicgenForConditionalGeneration

from daemon.engine.decoding.codec import codes_to_audio


@pytest.mark.parametrize("stereo", [False, True])
def test_windowed_decode_equals_the_whole_signal_decode(
    stereo: bool, tiny_model_dir: Path, tiny_stereo_model_dir: Path
) -> None:
    model = MusicgenForConditionalGeneration.from_pretrained(
        tiny_stereo_model_dir if stereo else tiny_model_dir
    ).eval()
    dec = model.config.decoder
    torch.manual_seed(0)
    codes = torch.randint(0, dec.vocab_size, (2, dec.num_codebooks, 230))
    codec = model.audio_encoder
    with torch.inference_mode():
        halves = [codes] if not stereo else [codes[:, 0::2], codes[:, 1::2]]
        whole = torch.cat(
            [codec.decode(h[None], audio_scales=[None] * 2).audio_values for h in halves], dim=1
        ).float()
        # 50-frame windows, the last one short: 5 joins a row
        windowed = codes_to_audio(model, codes, window=50, context=25)
    assert windowed.shape == whole.shape == (2, 2 if stereo else 1, whole.shape[-1])
    assert float((windowed - whole).abs().max()) < 1e-4 * float(whole.abs().max())
    # without context the joins differ: the test can tell a seam
    seamed = codes_to_audio(model, codes, window=50, context=0)
    assert float((seamed - whole).abs().max()) > 1e-3 * float(whole.abs().max())
