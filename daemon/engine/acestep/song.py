"""One ACE-Step text2music call: rows of songs that share a decode, rendered with per-row seeds.

`render` is diffusers' `AceStepPipeline.__call__` for text2music, step for step (the pipeline's own
prompt encoding, source latents, masks, schedule, scheduler and guidance), with what the daemon
needs and the pipeline has not: every row draws its noise from its own generator seeded with the
row's seed (on the CPU, so the noise is the same on every device), a callback after every
denoising step that may raise to cancel, and the cross-attention keys and values of the
conditioning computed once per call instead of once per step (they do not change between steps;
`crossattn`). The steps themselves are `denoise`'s. The audio equals the pipeline's for the same
inputs and seed, which a test checks.

Rows share a call only when everything the pipeline takes once per call is equal (duration,
steps, guidance, shift, bpm, key, time signature) and their prompt and lyrics have the same
token counts: the DiT's cross-attention has no padding mask, so a row padded to a longer batch
mate's conditioning would hear the padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from daemon.engine.acestep.crossattn import cached_cross_attention
from daemon.engine.acestep.denoise import denoise, step_inputs
from daemon.engine.acestep.timbre import conditioning_states
from daemon.engine.acestep.vae import decode_rows, lean_snakes

# The pipeline's own token limits (its __call__ defaults).
MAX_TEXT_TOKENS = 256
MAX_LYRIC_TOKENS = 2048
# The timestep shift ACE-Step 1.5 checkpoints are made for (the pipeline's default).
SHIFT = 3.0


def default_steps(turbo: bool) -> int:
    """Denoising steps when a job gives none: turbo checkpoints are distilled for 8, base ones
    want many more (ACE-Step's own default for them is 50)."""
    return 8 if turbo else 50


def default_guidance(turbo: bool) -> float:
    """Guidance when a job gives none: none for turbo checkpoints (built in), ACE-Step's 7 otherwise."""
    return 1.0 if turbo else 7.0


@dataclass(frozen=True)
class SongParams:
    """What every row of one call shares (the pipeline takes these once per call)."""

    duration: float
    steps: int
    guidance: float  # <= 1.0, or a turbo checkpoint: no classifier-free guidance
    shift: float
    bpm: int | None = None
    keyscale: str | None = None  # "C major", "F# minor"
    timesignature: str | None = None  # beats per bar: "4" for 4/4


@dataclass(frozen=True)
class SongRow:
    """One output: variation `variation` of request `req_index`, with its own seed and text."""

    req_index: int
    variation: int
    seed: int
    prompt: str
    lyrics: str = ""
    language: str = "en"
    track: str | None = None  # extract: the stem this row is


@dataclass(frozen=True, eq=False)
class SourceEdit:
    """A song the call edits (`daemon.core.messages.EditTask`), its audio at the VAE's rate and
    channels: `audio` [channels, samples] float32."""

    kind: str  # repaint, cover or extract
    audio: np.ndarray
    start: float = 0.0
    end: float | None = None
    strength: float = 1.0
    classes: tuple[str, ...] = ()  # complete: the tracks to add


@dataclass
class SongBatch:
    """Rows rendered in one call (with `edit`: all rows edit the same source, one track)."""

    params: SongParams
    rows: list[SongRow]
    continued_s: float = 0.0  # ACE-Step text2music never continues a reference
    edit: SourceEdit | None = None
    adapter: tuple[str, float] | None = None  # (name, scale) of the LoRA the rows run with


def token_counts(pipe: Any, params: SongParams, row: SongRow) -> tuple[int, int]:
    """(prompt tokens, lyric tokens) of `row` as the pipeline formats and truncates them."""
    text, lyrics = pipe._format_prompt(
        prompt=row.prompt,
        lyrics=row.lyrics,
        vocal_language=row.language,
        audio_duration=params.duration,
        bpm=params.bpm,
        keyscale=params.keyscale,
        timesignature=params.timesignature,
    )
    n_text = len(pipe.tokenizer(text, truncation=True, max_length=MAX_TEXT_TOKENS).input_ids)
    n_lyric = len(pipe.tokenizer(lyrics).input_ids)
    return n_text, n_lyric


def lyric_tokens(pipe: Any, lyrics: str, language: str) -> int:
    """Tokens the formatted lyrics take (the pipeline cuts them at MAX_LYRIC_TOKENS)."""
    _, formatted = pipe._format_prompt(prompt="", lyrics=lyrics, vocal_language=language)
    return len(pipe.tokenizer(formatted).input_ids)


def latent_frames(pipe: Any, duration: float) -> int:
    return math.ceil(duration * pipe.latents_per_second)


def pipeline_kwargs(batch: SongBatch) -> dict[str, Any]:
    """The AceStepPipeline.__call__ arguments that render the same rows (minus the generators)."""
    p = batch.params
    return dict(
        prompt=[r.prompt for r in batch.rows],
        lyrics=[r.lyrics for r in batch.rows],
        vocal_language=[r.language for r in batch.rows],
        audio_duration=p.duration,
        num_inference_steps=p.steps,
        guidance_scale=p.guidance,
        shift=p.shift,
        bpm=p.bpm,
        keyscale=p.keyscale,
        timesignature=p.timesignature,
    )


def row_generators(rows: Sequence[SongRow]) -> list[torch.Generator]:
    """One CPU generator per row, seeded with the row's seed."""
    return [torch.Generator("cpu").manual_seed(r.seed) for r in rows]


def calls(rows: int, fixed_rows: int | None) -> int:
    """Pipeline calls a batch of `rows` takes (see `render`)."""
    return 1 if not fixed_rows else math.ceil(rows / fixed_rows)


def render(
    pipe: Any,
    batch: SongBatch,
    *,
    on_step: Callable[[int], None] | None = None,
    fixed_rows: int | None = None,
    cache_cross_attention: bool = True,
    dit: Callable[..., Any] | None = None,
) -> list[np.ndarray]:
    """Audio per row, float32 [channels, samples] at the VAE's rate, exactly `duration` long.

    `fixed_rows`: every call runs at exactly this many rows (the last one filled up with copies of
    its last row, whose audio is dropped), so that a row's arithmetic is the same whatever its batch
    mates: 1 renders each row alone. None: all rows in one call (a row's last bits may then depend on
    how many rows shared it). `on_step(done)` runs after each denoising step (done counts the
    steps of all the batch's calls) and may raise to abort. `dit` runs the DiT's steps in place of
    `pipe.transformer` (a compiled one)."""
    rows, p = batch.rows, batch.params
    run = dit if dit is not None else pipe.transformer

    def call(part: list[SongRow], before: int) -> list[np.ndarray]:
        ticks = None if on_step is None else lambda i: on_step(before + i)
        return _call(pipe, p, part, ticks, cache_cross_attention, batch.edit, run)

    if not fixed_rows:
        return call(rows, 0)
    out: list[np.ndarray] = []
    for k in range(0, len(rows), fixed_rows):
        part = rows[k : k + fixed_rows]
        filled = part + [part[-1]] * (fixed_rows - len(part))
        out.extend(call(filled, (k // fixed_rows) * p.steps)[: len(part)])
    return out


def conditioning(pipe: Any, p: SongParams, rows: list[SongRow], instruction: str) -> torch.Tensor:
    """The DiT's conditioning of `rows` (prompt, lyrics, metadata under `instruction`); with no
    reference audio the timbre is the checkpoint's learned silence's (as the pipeline's), encoded
    once per model (`timbre`)."""
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    text_h, text_mask, lyric_h, lyric_mask = pipe.encode_prompt(
        prompt=[r.prompt for r in rows],
        lyrics=[r.lyrics for r in rows],
        device=device,
        vocal_language=[r.language for r in rows],
        audio_duration=p.duration,
        instruction=instruction,
        bpm=p.bpm,
        keyscale=p.keyscale,
        timesignature=p.timesignature,
        max_text_length=MAX_TEXT_TOKENS,
        max_lyric_length=MAX_LYRIC_TOKENS,
    )
    return conditioning_states(pipe, text_h, text_mask, lyric_h, lyric_mask, device, dtype)


@torch.no_grad()
def _call(
    pipe: Any,
    p: SongParams,
    rows: list[SongRow],
    on_step: Callable[[int], None] | None,
    cache_cross_attention: bool,
    edit: SourceEdit | None,
    dit: Callable[..., Any],
) -> list[np.ndarray]:
    n = len(rows)
    task = edit.kind if edit is not None else "text2music"
    classes = list(edit.classes) if edit is not None else None
    instruction = pipe._get_task_instruction(task, track_name=rows[0].track, complete_track_classes=classes)
    encoder_states = conditioning(pipe, p, rows, instruction)
    context, chunk_mask, kept, length = _context(pipe, task, n, latent_frames(pipe, p.duration), edit)
    text_only = None
    if edit is not None and edit.kind == "cover" and edit.strength < 1.0:
        # As the pipeline: the velocity is blended with that of the same text as text2music.
        text_only = conditioning(pipe, p, rows, pipe._get_task_instruction("text2music"))
        # Two conditionings of one shape in one call: one set of cached keys would serve both.
        cache_cross_attention = False
    latents = pipe.prepare_latents(
        batch_size=n,
        audio_duration=length / pipe.latents_per_second,
        dtype=pipe.transformer.dtype,
        device=pipe._execution_device,
        generator=row_generators(rows),
    )
    strength = edit.strength if edit is not None else 1.0
    inputs = step_inputs(pipe, p.guidance, dit, encoder_states, context, text_only, strength)
    del encoder_states, context, text_only
    with cached_cross_attention(pipe.transformer, inputs.conditioning, enabled=cache_cross_attention):
        xt = denoise(pipe, p.steps, p.shift, inputs, latents, on_step)
    del inputs, latents
    if task == "repaint" and kept is not None:
        # Outside the range the source's own latents are decoded, so the rest of the song is the
        # source's VAE round trip (the pipeline alone would regenerate it near the source).
        xt = torch.where(chunk_mask > 0.5, xt, kept)
    # The pipeline's level (anti-clip, then every row's peak at -1 dBFS, each row on its own); a
    # repaint keeps the source's level (what is kept must stay as it was).
    return decode_rows(pipe.vae, xt, int(round(p.duration * pipe.sample_rate)), level=task != "repaint")


def _context(
    pipe: Any, task: str, n: int, length: int, edit: SourceEdit | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """(the DiT's context latents, the chunk mask, the source's own latents or None, latent
    frames) of `n` rows: what the song starts from and which frames the model writes."""
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    kept: torch.Tensor | None = None
    if edit is None:
        src, length = pipe.prepare_src_latents(
            device=device, dtype=dtype, batch_size=n, latent_length=length, task_type="text2music"
        )
    else:
        src, kept, length = source_latents(pipe, edit, n, device, dtype)
    chunk_mask = pipe._build_chunk_mask(
        task_type=task,
        latent_length=length,
        batch_size=n,
        device=device,
        dtype=dtype,
        acoustic_dim=pipe.transformer.config.audio_acoustic_hidden_dim,
        repainting_start=edit.start if edit is not None else None,
        repainting_end=edit.end if edit is not None else None,
        has_src_audio=edit is not None,
    )
    if task == "repaint":
        # As the pipeline: the model hears silence inside the range and the source around it.
        blank, _ = pipe.prepare_src_latents(device=device, dtype=dtype, batch_size=n, latent_length=length)
        src = torch.where(chunk_mask > 0.5, blank, src)
    return torch.cat([src, chunk_mask], dim=-1), chunk_mask, kept, length


def encode_source(pipe: Any, audio: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The source's VAE latents [1, frames, dim]: the mean of the encoder's distribution (not a
    draw from it), so a seeded edit is repeatable and the round trip is one fixed signal. The
    audio is padded with silence to whole latent frames (the VAE drops a last partial one)."""
    hop = round(pipe.sample_rate / pipe.latents_per_second)
    audio = np.pad(audio, ((0, 0), (0, -audio.shape[-1] % hop)))
    x = torch.from_numpy(np.ascontiguousarray(audio)).unsqueeze(0).to(device=device, dtype=pipe.vae.dtype)
    with lean_snakes(pipe.vae):
        return pipe.vae.encode(x).latent_dist.mode().transpose(1, 2).to(dtype=dtype)


def source_latents(
    pipe: Any, edit: SourceEdit, n: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(the context's source latents, the source's own latents, latent frames) for `n` rows; a
    cover's context is the source through the checkpoint's audio tokenizer, as the pipeline's."""
    kept = encode_source(pipe, edit.audio, device, dtype).expand(n, -1, -1).contiguous()
    length = kept.shape[1]
    src = kept
    if edit.kind == "cover":
        silence = pipe.condition_encoder.silence_latent.to(device=device, dtype=dtype)
        quantized, _ = pipe.audio_tokenizer.tokenize(kept, silence)
        src = pipe.audio_token_detokenizer(quantized.to(device=device, dtype=dtype))[
            :, :length, :
        ].contiguous()
    return src, kept, length
