"""The engine's music from music on the tiny models: a continuation starts with its reference and
has the asked length, sections give windows their own text, melody checkpoints follow a chroma."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from daemon.core.config import Settings
from daemon.core.errors import InvalidJobError
from daemon.core.messages import AudioPrompt, GenerationRequest
from daemon.engine.decoding import get_backend
from daemon.engine.decoding.api import DecodeBackend, DecodeRequest
from daemon.engine.decoding.codec import audio_to_codes, codes_to_audio
from daemon.engine.decoding.testseam import decode_with
from daemon.engine.longform import plan_segments
from daemon.engine.melody import ChromaExtractor, ChromaParams, to_rate_and_channels
from daemon.engine.model import MusicEngine
from daemon.engine.plan import Framing, plan_chunks

SR = 32000


def tone(seconds: float, hz: float = 220.0, channels: int = 1, rate: int = SR) -> AudioPrompt:
    t = np.arange(int(rate * seconds)) / rate
    x = np.stack([0.4 * np.sin(2 * np.pi * hz * (c + 1) * t) for c in range(channels)]).astype(np.float32)
    return AudioPrompt(x, rate)


@pytest.fixture
def engine(
    make_settings: Callable[..., Settings], tiny_melody_model_dir: Path, tiny_stereo_model_dir: Path
) -> MusicEngine:
    settings = make_settings(
        window_s=1.0,
        extend_stride_s=0.6,
        models={
            "tiny": {"path": str(make_settings().models["tiny"].path)},
            "melodic": {"path": str(tiny_melody_model_dir)},
            "stereo": {"path": str(tiny_stereo_model_dir)},
        },
    )
    return MusicEngine(settings)


def test_plan_segments_matches_plain_long_form_and_stays_inside_sections() -> None:
    plans = plan_segments([10, 50], 40, 24, prefix=16)
    assert [(p.context, p.new, p.segment) for p in plans] == [
        (16, 10, 0),
        (16, 24, 1),
        (16, 24, 1),
        (16, 2, 1),
    ]
    assert sum(p.new for p in plans) == 60
    with pytest.raises(ValueError, match="prefix"):
        plan_segments([10], 40, 24, prefix=17)


def test_sections_are_planned_by_their_boundaries() -> None:
    framing = Framing(frame_rate=40.0, sample_rate=SR, window=40, stride=24)
    req = GenerationRequest(
        "a / b", 2.0, seed=1, sections=(("intro part", 0.5), ("main part", 1.5)), continue_from=tone(3.0)
    )
    [chunk] = plan_chunks([req], [1], framing, max_batch=8, per_row_seeds=True)
    assert chunk.frames == 80 and chunk.prefix_frames == 16  # window - stride
    assert chunk.segments == (4, 60) and chunk.segment_prompts == ("intro part", "main part")
    plain = GenerationRequest("plain", 2.0, seed=2)
    chunks = plan_chunks([req, plain, plain], [1, 2, 3], framing, max_batch=8, per_row_seeds=True)
    assert [len(c.rows) for c in chunks] == [1, 2]  # the conditioned request is never batched with others


def test_continuation_has_the_length_and_starts_with_the_reference(engine: MusicEngine) -> None:
    ref = tone(2.0)
    a, b = engine.generate([GenerationRequest("keep going", 1.5, seed=s, continue_from=ref) for s in (1, 2)])
    fresh = engine.generate(GenerationRequest("keep going", 1.5, seed=1))[0]
    assert a.audio.shape == (1, 1, int(1.5 * SR)) and a.continued_s == pytest.approx(0.4)
    n = int(0.4 * SR)
    margin = 800 * 3  # a few codec hops: the decoder's convolutions see across the seam
    # The first 0.4 s are the reference (its codes), whatever the seed; then the model's own music.
    np.testing.assert_allclose(a.audio[0, :, : n - margin], b.audio[0, :, : n - margin], atol=1e-5)
    assert not np.allclose(a.audio[0, :, n + margin :], b.audio[0, :, n + margin :], atol=1e-3)
    assert not np.allclose(a.audio[0, :, : n - margin], fresh.audio[0, :, : n - margin], atol=1e-3)
    # ... and they are what the codec makes of the reference's last 0.4 s. (The tiny random codec's
    # encoder tells few inputs apart, so this, not a second reference, is the check on content.)
    model = engine.loaded.ckpt.model  # type: ignore[union-attr]
    with torch.inference_mode():
        codes = audio_to_codes(model, torch.from_numpy(ref.samples), 16)
        alone = codes_to_audio(model, codes[None]).numpy()[0]
    np.testing.assert_allclose(a.audio[0, :, : n - margin], alone[:, : n - margin], atol=1e-4)


def test_a_melody_model_leaves_the_decode_loop_of_the_others_alone(engine: MusicEngine) -> None:
    engine.load_model("tiny")
    loop = engine.loaded.backend.name  # type: ignore[union-attr]
    engine.generate(GenerationRequest("tune", 0.5, seed=1, melody=tone(1.0)), model="melodic")
    res = engine.generate(GenerationRequest("plain again", 0.5, seed=1), model="tiny")[0]
    assert res.decoder == loop == engine.loaded.backend.name  # type: ignore[union-attr]


def test_continuation_on_stereo_and_from_another_rate(engine: MusicEngine) -> None:
    ref = tone(1.0, rate=44100, channels=2)
    res = engine.generate(GenerationRequest("wide", 1.0, seed=5, continue_from=ref), model="stereo")[0]
    assert res.audio.shape == (1, 2, SR) and res.continued_s == pytest.approx(0.4)


def test_a_reference_shorter_than_the_overlap_is_used_whole(engine: MusicEngine) -> None:
    res = engine.generate(GenerationRequest("short", 1.0, seed=5, continue_from=tone(0.25)))[0]
    assert res.continued_s == pytest.approx(0.25) and res.audio.shape[-1] == SR


class Recording:
    """The real decode loop, with a note of what each window was given (text, frames, prefix)."""

    def __init__(self, inner: DecodeBackend) -> None:
        self.inner, self.name = inner, inner.name
        self.per_row_seeds = getattr(inner, "per_row_seeds", False)
        self.calls: list[tuple[list[int], int, int]] = []

    def decode(self, model: object, req: DecodeRequest) -> torch.Tensor:
        prefix = 0 if req.prompt_codes is None else int(req.prompt_codes.shape[-1])
        self.calls.append((req.input_ids[0].tolist(), req.max_frames, prefix))
        return self.inner.decode(model, req)


def test_each_window_gets_the_text_of_its_section(engine: MusicEngine) -> None:
    engine.load_model()  # its decode-loop check is not a window of this job
    rec = Recording(get_backend(engine.settings.decoder))
    decode_with(engine, rec)
    sections = (("warm piano intro", 0.6), ("loud metal drums", 1.4))
    res = engine.generate(GenerationRequest("x / y", 2.0, seed=9, count=2, sections=sections))[0]
    assert res.audio.shape == (2, 1, 2 * SR)
    processor = engine.loaded.ckpt.processor  # type: ignore[union-attr]
    ids = {
        p: processor(text=[p], padding=True, return_tensors="pt")["input_ids"][0].tolist()
        for p, _ in sections
    }
    # 0.6 s = 24 frames for the intro, then 56 frames of drums in windows of 24 new frames
    # after 16 of context.
    assert [(t == ids["warm piano intro"], n, c) for t, n, c in rec.calls] == [
        (True, 24, 0),
        (False, 24, 16),
        (False, 24, 16),
        (False, 8, 16),
    ]
    assert all(t == ids["loud metal drums"] for t, _, _ in rec.calls[1:])


def test_a_continuation_window_starts_from_the_prefix(engine: MusicEngine) -> None:
    engine.load_model()
    rec = Recording(get_backend(engine.settings.decoder))
    decode_with(engine, rec)
    engine.generate(GenerationRequest("keep going", 1.5, seed=1, continue_from=tone(2.0)))
    assert [(n, c) for _, n, c in rec.calls] == [(24, 16), (20, 16)]  # 16 + 24 + 20 = 60 frames = 1.5 s


def test_melody_model_is_given_the_chroma_and_plain_models_refuse(engine: MusicEngine) -> None:
    rec = Recording(get_backend("transformers"))
    decode_with(engine, rec)
    seen: list[torch.Tensor] = []
    inner = rec.decode

    def decode(model: object, req: DecodeRequest) -> torch.Tensor:
        seen.append(req.extras["input_features"])
        return inner(model, req)

    rec.decode = decode  # type: ignore[method-assign]
    a = engine.generate(
        GenerationRequest("tune", 1.0, seed=4, count=2, melody=tone(2.0, 220.0)), model="melodic"
    )[0]
    engine.generate(GenerationRequest("tune", 1.0, seed=4, melody=tone(2.0, 370.0)), model="melodic")
    assert a.decoder == "transformers" and a.audio.shape == (2, 1, SR)
    assert seen[0].shape == (2, 235, 12)  # one chroma per row, 30 s of frames as the checkpoint says
    pitch = [int(s[0, :10].argmax(-1).mode().values) for s in seen]
    assert pitch == [9, 6]  # A and F sharp, with C as bin 0
    # The checkpoint's decoder sees it: other chroma, other logits.
    model = engine.loaded.ckpt.model  # type: ignore[union-attr]
    ids = engine.loaded.ckpt.processor(text=["tune"], padding=True, return_tensors="pt")  # type: ignore[union-attr]
    start = torch.full((4, 1), model.generation_config.decoder_start_token_id)
    with torch.inference_mode():
        la, lb = (model(**ids, input_features=f[:1], decoder_input_ids=start).logits for f in seen)
    assert not torch.allclose(la, lb)
    with pytest.raises(InvalidJobError) as info:
        engine.generate(GenerationRequest("tune", 1.0, seed=4, melody=tone(1.0)), model="tiny")
    assert info.value.loc == "melody" and "melodic" in (info.value.hint or "")


def test_chroma_finds_the_pitch_class() -> None:
    chroma = ChromaExtractor(ChromaParams())(tone(3.0, 440.0).samples, SR)
    assert chroma.shape == (1, 235, 12)
    assert int(chroma[0, :20].argmax(-1).mode().values) == 9  # A, with C as bin 0


def _librosa_chroma(samples: np.ndarray, params: ChromaParams) -> np.ndarray:
    """[frames, 12] chroma of mono audio as MusicgenMelodyFeatureExtractor computes it (padded or cut
    to chunk_length with zeros, a centred Hann power spectrogram, the chroma filter bank, each frame
    divided by its maximum), here by librosa: the library transformers ported its chroma from, a
    computation that shares no code with daemon.engine.melody."""
    import librosa

    n = params.chunk_length * params.sampling_rate
    x = np.zeros(n, dtype=np.float32)
    x[: min(n, samples.shape[-1])] = samples[0, :n]
    chroma = librosa.feature.chroma_stft(
        y=x,
        sr=params.sampling_rate,
        n_fft=params.n_fft,
        hop_length=params.hop_length,
        tuning=0.0,
        norm=np.inf,
        center=True,
        pad_mode="reflect",  # torch.stft's (and torchaudio's) padding of a centred frame
        n_chroma=params.num_chroma,
    )
    return chroma.T


def _chords(seconds: float) -> np.ndarray:
    """C major, A minor, F major, G major triads, one a second, with their overtones."""
    t = np.arange(int(seconds * SR)) / SR
    out = np.zeros_like(t)
    roots = [261.63, 220.0, 174.61, 196.0]
    for i, root in enumerate(roots * int(np.ceil(seconds / len(roots)))):
        span = (t >= i) & (t < i + 1)
        third = 2 ** (3 / 12) if i % 4 == 1 else 2 ** (4 / 12)
        for f in (root, root * third, root * 2 ** (7 / 12)):
            for k, amp in ((1, 0.3), (2, 0.1), (3, 0.05)):
                out[span] += amp * np.sin(2 * np.pi * f * k * t[span])
    return out[None].astype(np.float32)


@pytest.mark.parametrize("material", ["chords", "noise"])
def test_chroma_matches_the_reference_computation_frame_by_frame(material: str) -> None:
    params = ChromaParams()
    if material == "chords":
        samples = _chords(8.0)
    else:
        samples = (0.3 * np.random.default_rng(5).standard_normal((1, 6 * SR))).astype(np.float32)
    ours = ChromaExtractor(params)(samples, SR)[0].numpy()
    reference = _librosa_chroma(samples, params)
    assert ours.shape == reference.shape == (235, 12)
    assert np.all(ours.sum(-1) == 1)  # one-hot: the strongest pitch class of each frame
    # Every frame whose strongest pitch class is clear (not a tie within float32 rounding) agrees,
    # the silent padding after the audio included (all zero: pitch class 0 in both).
    top2 = np.sort(reference, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3
    audio_frames = samples.shape[-1] // params.hop_length
    assert clear[:audio_frames].mean() >= 0.9
    agree = ours.argmax(-1) == reference.argmax(-1)
    assert agree[clear].all(), np.flatnonzero(~agree & clear)
    silent = reference.max(-1) == 0
    assert silent.sum() > 100 and (ours[silent].argmax(-1) == 0).all()
    if material == "chords":
        # The chords themselves: each second's frames name one of its triad's pitch classes.
        triads = [{0, 4, 7}, {9, 0, 4}, {5, 9, 0}, {7, 11, 2}]
        for frame in range(4, 8 * SR // params.hop_length - 4):
            second = frame * params.hop_length // SR
            assert ours[frame].argmax() in triads[second % 4], frame


def test_to_rate_and_channels() -> None:
    x = tone(1.0, channels=2, rate=48000).samples
    assert to_rate_and_channels(x, 48000, SR, 1).shape == (1, SR)
    assert to_rate_and_channels(x[:1], 48000, SR, 2).shape == (2, SR)
