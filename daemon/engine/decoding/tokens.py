"""Audio-token decoding: the backend interface, the transformers `generate` backend, codes -> audio.

A backend turns text-encoder inputs into MusicGen audio codes (delay pattern already removed).
The engine owns everything around it (seeds, batching, long form, errors); backends own only the
token loop. Two exist: `TransformersBackend` here (reference) and `daemon.engine.decoding.dgx.DgxBackend`
(our static-cache loop, issue 8).

Sampling semantics (shared by every backend, audiocraft's): `greedy` takes the argmax; otherwise
logits / temperature, then top-p when `top_p > 0` (top-k ignored), else top-k when `top_k > 0`,
else the full distribution. Classifier-free guidance: `uncond + cfg_coef * (cond - uncond)`; a
`cfg_coef <= 1` turns guidance off (1.0 is the same thing mathematically, and half the work).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol, runtime_checkable

import torch

from daemon.core.errors import GenerationError

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RowSampling:
    """How one output row is sampled; `seed` seeds that row's random stream."""

    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    greedy: bool = False
    seed: int = 0

    def without_seed(self) -> tuple[float, int, float, bool]:
        """The part that rows of one transformers `generate` call must share."""
        return (self.temperature, self.top_k, self.top_p, self.greedy)

    def filters(self) -> tuple[int, float]:
        """(top_k, top_p) as applied: top-p wins when set (audiocraft); 0 means that filter is off."""
        if self.top_p > 0.0:
            return 0, self.top_p
        return max(self.top_k, 0), 0.0


@dataclass
class DecodeRequest:
    """One decoding call. B rows; the backend doubles them for classifier-free guidance itself."""

    input_ids: torch.Tensor  # [B, L] text tokens
    attention_mask: torch.Tensor  # [B, L]
    rows: list[RowSampling]  # len B
    cfg_coef: float  # guidance scale; <= 1.0 is off
    max_frames: int  # new audio frames wanted (delay pattern already removed)
    prompt_codes: torch.Tensor | None = None  # [B, K, P] codes to continue from (long form)
    on_step: StepCallback | None = None  # (step, total_steps) after each step; may raise to abort
    extras: dict[str, Any] = field(default_factory=dict)  # backend-specific hints, ignored by others

    def __post_init__(self) -> None:
        b = self.input_ids.shape[0]
        if self.attention_mask.shape != self.input_ids.shape:
            raise ValueError("attention_mask must have the shape of input_ids")
        if len(self.rows) != b:
            raise ValueError(f"rows has {len(self.rows)} entries for a batch of {b}")
        if self.max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        if self.prompt_codes is not None and self.prompt_codes.shape[0] != b:
            raise ValueError("prompt_codes must have one entry per row")


@runtime_checkable
class DecodeBackend(Protocol):
    name: str

    def decode(self, model: Any, req: DecodeRequest) -> torch.Tensor:
        """Codes [B, K, max_frames] (long), delay pattern removed; the prompt is not included."""
        ...


def channel_codebooks(model: Any) -> int:
    """Codebooks per audio channel: the depth of the delay pattern (stereo interleaves L/R codebooks)."""
    dec = model.config.decoder
    return dec.num_codebooks // dec.audio_channels


def delay_steps(model: Any) -> int:
    """Extra decoding steps the delay pattern costs: `generate` yields `steps - (K - 1)` frames."""
    return channel_codebooks(model) - 1


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run with torch's RNG seeded to `seed`, leaving the global RNG state as it was."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _StepHook:
    """A stopping criterion that never stops: it reports each finished step (and may raise)."""

    def __init__(self, on_step: StepCallback | None, total: int) -> None:
        self.on_step = on_step
        self.total = total
        self.step = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.step += 1
        if self.on_step is not None:
            self.on_step(min(self.step, self.total), self.total)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@contextmanager
def _codes_instead_of_audio(model: Any) -> Iterator[list[torch.Tensor]]:
    """Take the codes `generate` hands to the codec and skip the codec.

    MusicGen's composite `generate` always ends by decoding audio; long form decodes the whole
    code sequence once at the end instead, so the per-call decode is wasted work.
    """
    captured: list[torch.Tensor] = []
    codec = model.audio_encoder

    def take(audio_codes: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        captured.append(audio_codes)
        return SimpleNamespace(audio_values=audio_codes.new_zeros((audio_codes.shape[1], 1, 0), dtype=torch.float32))

    codec.decode = take  # instance attribute shadows the method
    try:
        yield captured
    finally:
        del codec.decode


class TransformersBackend:
    """Hugging Face `generate`. All rows of one call share a sampling config (HF has one sampler per
    call), so rows are grouped; each group is seeded with its first row's seed. Within a group, a
    row's samples therefore depend on its batch mates: exact reproduction needs the same batch."""

    name = "transformers"

    def decode(self, model: Any, req: DecodeRequest) -> torch.Tensor:
        groups: dict[tuple[float, int, float, bool], list[int]] = {}
        for i, row in enumerate(req.rows):
            groups.setdefault(row.without_seed(), []).append(i)
        per_group = max(req.max_frames, delay_steps(model)) + delay_steps(model)
        total_steps = len(groups) * per_group
        done = 0
        out: list[torch.Tensor | None] = [None] * len(req.rows)
        for idx in groups.values():
            offset = done

            def on_step(step: int, _total: int, offset: int = offset) -> None:
                if req.on_step is not None:
                    req.on_step(offset + step, total_steps)

            codes = self._decode_group(model, req, idx, on_step)
            done += per_group
            for j, i in enumerate(idx):
                out[i] = codes[j]
        return torch.stack([c for c in out if c is not None])

    def _decode_group(self, model: Any, req: DecodeRequest, idx: list[int], on_step: StepCallback) -> torch.Tensor:
        row = req.rows[idx[0]]
        sel = torch.tensor(idx, device=req.input_ids.device)
        input_ids = req.input_ids.index_select(0, sel)
        attention_mask = req.attention_mask.index_select(0, sel)
        # transformers skips the delay pattern below K-1 frames: decode that many and cut.
        frames = max(req.max_frames, delay_steps(model))
        steps = frames + delay_steps(model)
        k = model.config.decoder.num_codebooks

        gen = copy.deepcopy(model.generation_config)
        gen.max_length = None
        gen.max_new_tokens = steps
        gen.min_new_tokens = None
        gen.do_sample = not row.greedy
        top_k, top_p = row.filters()
        # generate fills None fields from the checkpoint's generation_config (top_k=250 on the hub),
        # so "off" must be spelled out: top_k=0 and top_p=1.0 add no filter.
        if row.greedy:
            # Ignored by greedy search; these are the values transformers does not warn about.
            gen.temperature, gen.top_k, gen.top_p = 1.0, 50, 1.0
        else:
            gen.temperature = row.temperature
            gen.top_k = top_k
            gen.top_p = top_p if top_p > 0 else 1.0
        # None would be filled back from the checkpoint's generation_config (3.0): say 1.0 (off).
        gen.guidance_scale = req.cfg_coef if req.cfg_coef > 1.0 else 1.0
        kwargs: dict[str, Any] = {}
        prompt_frames = 0
        if req.prompt_codes is not None:
            prompt = req.prompt_codes.index_select(0, sel)
            prompt_frames = prompt.shape[-1]
            kwargs["decoder_input_ids"] = prompt.reshape(len(idx) * k, prompt_frames)

        from transformers import StoppingCriteriaList

        hook = _StepHook(on_step, steps)
        device = input_ids.device
        with seeded(row.seed, device), _codes_instead_of_audio(model) as captured:
            model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=gen,
                stopping_criteria=StoppingCriteriaList([hook]),
                **kwargs,
            )
        if not captured:
            raise GenerationError(
                "transformers generate returned no audio codes (unsupported transformers version?)",
                hint="use a transformers release this daemon supports (see pyproject.toml) or decoder: dgx",
            )
        if len(captured) == 2:  # stereo: left and right halves of the interleaved codebooks
            left, right = captured[0][0], captured[1][0]
            codes = torch.stack([left, right], dim=2).reshape(left.shape[0], k, left.shape[-1])
        else:
            codes = captured[0][0]
        want = prompt_frames + frames
        if codes.shape[-1] != want or codes.shape[1] != k:
            raise GenerationError(
                f"transformers generate produced codes of shape {tuple(codes.shape)}, expected [.., {k}, {want}]",
                hint="this transformers version changed MusicGen's delay pattern; pin transformers or use decoder: dgx",
            )
        return codes[..., prompt_frames : prompt_frames + req.max_frames].long()


def get_backend(name: str) -> DecodeBackend:
    """The decode loop for the `decoder` setting: auto (ours when available), dgx, transformers."""
    if name == "transformers":
        return TransformersBackend()
    if name not in ("auto", "dgx"):
        raise ValueError(f"decoder must be auto, dgx or transformers, not {name!r}")
    try:
        from daemon.engine.decoding.dgx import DgxBackend  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        if name == "dgx":
            raise GenerationError(
                f"the dgx decode loop is not available: {exc}",
                hint="set `decoder: transformers` (or auto) in the config",
            ) from exc
        log.debug("dgx decode loop unavailable (%s); using transformers generate", exc)
        return TransformersBackend()
    return DgxBackend()


def codes_to_audio(model: Any, codes: torch.Tensor) -> torch.Tensor:
    """Audio [B, channels, samples] (float32) from codes [B, K, T] through the model's EnCodec.

    Stereo MusicGen interleaves codebooks (even: left, odd: right), each half decoded by the mono codec.
    """
    codec = model.audio_encoder
    channels = model.config.decoder.audio_channels
    codes = codes.to(codec.device)
    if channels == 1:
        parts = [codes]
    else:
        parts = [codes[:, 0::2, :], codes[:, 1::2, :]]
    outs = []
    for part in parts:
        audio = codec.decode(part[None, ...], audio_scales=[None] * part.shape[0]).audio_values
        outs.append(audio)
    audio = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    return audio.float()


def frame_rate(model: Any) -> float:
    """Audio frames per second: sample rate / product of the codec's upsampling ratios."""
    cfg = model.config.audio_encoder
    return cfg.sampling_rate / math.prod(cfg.upsampling_ratios)
