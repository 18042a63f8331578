"""MusicGen checkpoints: load one by config name, fetch one into the cache, make tiny/random ones offline.

Every checkpoint, hub or local, goes through the same `AutoProcessor.from_pretrained` +
`MusicgenForConditionalGeneration.from_pretrained` path; the made-up ones are ordinary
`save_pretrained` folders with a `tokenizers` Unigram tokenizer (transformers 5.x's T5 tokenizer
loads nothing else), so tests exercise the production loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from daemon.core.config import ModelSpec, Settings
from daemon.core.errors import ModelLoadError, UnknownModelError

log = logging.getLogger(__name__)

Shape = Literal["small", "medium", "large"]

# Words a music prompt is made of; each is one piece of the offline tokenizer's vocabulary.
_MUSIC_WORDS = """
a an and the with of in on for to by from at into over under through without
music song track beat beats loop groove rhythm melody harmony chord chords bass bassline drum drums
kick snare hihat hi hat cymbal percussion piano keys synth synthesizer pad pads lead arp arpeggio guitar
acoustic electric strings violin cello viola orchestra orchestral brass horn horns trumpet trombone sax
saxophone flute clarinet choir vocal vocals voice organ bells marimba harp banjo ukulele accordion
lofi lo fi hip hop jazz blues rock metal punk pop funk soul disco house techno trance ambient
dubstep drum and bass dnb edm electronic classical cinematic epic folk country reggae latin
salsa samba bossa nova afrobeat trap rnb gospel chill chillout downtempo synthwave retrowave
vaporwave industrial minimal deep progressive tropical garage grime drill
warm cold dark bright happy sad calm energetic dreamy dusty vintage modern retro soft loud slow fast
heavy light mellow smooth gritty crisp lush sparse dense uplifting melancholic relaxing driving
atmospheric ethereal haunting playful groovy punchy distorted clean reverb delay echo vinyl crackle
tape hiss noise filter filtered sidechain swing swung shuffle straight
bpm tempo key major minor intro outro verse chorus bridge drop build solo
80s 90s 70s 60s 00s 60 70 80 90 100 110 120 128 130 140 150 160 174
c d e f g b sharp flat
night morning summer winter rain ocean city space forest film game trailer
""".split()


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model ready for the engine, with what the sidecar records about where it came from."""

    name: str
    source: str  # hub repo id or local path
    revision: str  # commit hash for hub checkpoints, "local:<sha256>" for directories
    model: Any  # MusicgenForConditionalGeneration
    processor: Any  # MusicgenProcessor


# ---------------------------------------------------------------- offline tokenizer


def _vocabulary() -> list[tuple[str, float]]:
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {p for p, _ in pieces}
    # Single characters with and without the word marker keep every ASCII prompt free of <unk>,
    # at a score so low that whole words always win.
    chars = [chr(c) for c in range(33, 127)]
    for ch in chars:
        for piece in (ch, "▁" + ch):
            if piece not in seen:
                pieces.append((piece, -9.0))
                seen.add(piece)
    # transformers rebuilds the T5 pipeline at load without any custom normalizer, so case and
    # hyphenated compounds ("Lo-Fi") are covered by vocabulary entries instead.
    for word in _MUSIC_WORDS:
        for piece, score in (("▁" + word, -3.0), ("▁" + word.capitalize(), -3.5), (word, -4.0)):
            if piece not in seen:
                pieces.append((piece, score))
                seen.add(piece)
    return pieces


def build_tokenizer() -> Any:
    """A T5-compatible Unigram tokenizer built entirely offline."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=_vocabulary(), extra_ids=0, model_max_length=512)


def _build_processor(sampling_rate: int, channels: int) -> Any:
    from transformers import EncodecFeatureExtractor, MusicgenProcessor

    fe = EncodecFeatureExtractor(feature_size=channels, sampling_rate=sampling_rate, padding_value=0.0)
    return MusicgenProcessor(feature_extractor=fe, tokenizer=build_tokenizer())


# ---------------------------------------------------------------- made-up checkpoints


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence progress bars and the token-id range warning that real MusicGen configs also trigger.

    MusicGen's pad/bos id equals the codebook size by design (one slot past the codes).
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _save_checkpoint(
    directory: Path,
    *,
    text_encoder: dict[str, Any],
    audio_encoder: dict[str, Any],
    decoder: dict[str, Any],
    seed: int,
    dtype: str = "float32",
) -> Path:
    import torch
    from transformers import (
        EncodecConfig,
        GenerationConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        config = MusicgenConfig(
            text_encoder=T5Config(**text_encoder),
            audio_encoder=EncodecConfig(**audio_encoder),
            decoder=MusicgenDecoderConfig(**decoder),
        )
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(config)
        model.eval()
        # EnCodec's codebooks are buffers initialised to zeros: left so, the codec would turn
        # every code sequence into the same waveform and seeds could not be told apart by audio.
        with torch.no_grad():
            for layer in model.audio_encoder.quantizer.layers:
                layer.codebook.embed.normal_()
                layer.codebook.embed_avg.copy_(layer.codebook.embed)
        if dtype != "float32":
            model = model.to(getattr(torch, dtype))
        pad = decoder["pad_token_id"]
        # What hub MusicGen checkpoints ship in generation_config.json (audiocraft's defaults).
        model.generation_config = GenerationConfig(
            decoder_start_token_id=pad,
            pad_token_id=pad,
            bos_token_id=pad,
            do_sample=True,
            guidance_scale=3.0,
            max_length=1500,
            top_k=250,
        )
        model.save_pretrained(directory)
        # The feature extractor describes the codec's input (mono EnCodec even for stereo MusicGen).
        _build_processor(audio_encoder["sampling_rate"], audio_encoder["audio_channels"]).save_pretrained(directory)
    # safetensors writes 0600; the daemon's system user must be able to read a checkpoint an admin made.
    for f in directory.iterdir():
        if f.is_file():
            f.chmod(0o644)
    return directory


def init_tiny(directory: Path, *, stereo: bool = False, seed: int = 0) -> Path:
    """A tiny random MusicGen checkpoint (about 100k parameters) that decodes fast on a CPU.

    Its codec runs at 32 kHz with a hop of 800 samples: 40 frames per second, deliberately not
    MusicGen's 50 so that nothing downstream can get away with a hard-coded frame rate.
    """
    vocab = len(_vocabulary())
    codebook_size = 64
    return _save_checkpoint(
        directory,
        text_encoder=dict(
            vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=32,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        ),
        audio_encoder=dict(
            sampling_rate=32000, audio_channels=1, target_bandwidths=[1.0], upsampling_ratios=[8, 5, 4, 5],
            hidden_size=16, num_filters=4, num_residual_layers=1, num_lstm_layers=1, codebook_size=codebook_size,
            kernel_size=3, last_kernel_size=3, residual_kernel_size=3, use_causal_conv=False, use_conv_shortcut=False,
        ),
        decoder=dict(
            vocab_size=codebook_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
            num_codebooks=8 if stereo else 4, audio_channels=2 if stereo else 1, max_position_embeddings=4096,
            pad_token_id=codebook_size, bos_token_id=codebook_size, dropout=0.0,
        ),
        seed=seed,
    )


# The real MusicGen shapes (audiocraft / facebook/musicgen-*): decoder width, depth, heads, FFN.
_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "small": (1024, 24, 16, 4096),
    "medium": (1536, 48, 24, 6144),
    "large": (2048, 48, 32, 8192),
}


def init_random(directory: Path, shape: Shape, *, seed: int = 0, dtype: str = "float32") -> Path:
    """Random weights at the real musicgen-{small,medium,large} shapes, for benchmarks without downloads.

    Text encoder at t5-base's shape, EnCodec as facebook/encodec_32khz (hop 640: 50 frames/s).
    """
    if shape not in _SHAPES:
        raise ValueError(f"shape must be one of {', '.join(_SHAPES)}, not {shape!r}")
    hidden, layers, heads, ffn = _SHAPES[shape]
    return _save_checkpoint(
        directory,
        text_encoder=dict(
            vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
            feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        ),
        audio_encoder=dict(
            sampling_rate=32000, audio_channels=1, target_bandwidths=[2.2], upsampling_ratios=[8, 5, 4, 4],
            hidden_size=128, num_filters=64, num_residual_layers=1, num_lstm_layers=2, codebook_size=2048,
            use_causal_conv=False, use_conv_shortcut=False, normalize=False,
        ),
        decoder=dict(
            vocab_size=2048, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
            num_codebooks=4, audio_channels=1, max_position_embeddings=2048,
            pad_token_id=2048, bos_token_id=2048,
        ),
        seed=seed,
        dtype=dtype,
    )


# ---------------------------------------------------------------- resolving and loading

# Files a MusicGen snapshot needs; weights come as safetensors, or .bin for repos without them.
_HUB_PATTERNS = ["*.json", "*.safetensors", "spiece.model", "*.txt"]
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


def resolve_spec(name: str, settings: Settings) -> ModelSpec:
    """The configured model called `name`."""
    spec = settings.models.get(name)
    if spec is None:
        raise UnknownModelError(
            f"unknown model {name!r}: this daemon serves {', '.join(sorted(settings.models))}",
            hint="name one of the configured models, or add it under `models:` in the config",
        )
    return spec


def hf_offline() -> bool:
    """HF_HUB_OFFLINE read now, not at import (the daemon may be configured after start-up)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_cache_dir() -> Path:
    """The hub cache as HF_HUB_CACHE / HF_HOME say at call time (huggingface_hub reads them at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _hub_error(name: str, spec: ModelSpec, exc: Exception, *, offline: bool) -> ModelLoadError:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{spec.id}@{spec.revision}"
    fetch_hint = (
        f"run `dgx-music model fetch {name}` on a machine with network access (same HF_HOME), "
        f"or copy the Hugging Face cache to {hf_cache_dir()}"
    )
    if isinstance(exc, RevisionNotFoundError):
        return ModelLoadError(
            f"model {name!r}: revision {spec.revision!r} does not exist in {spec.id}",
            hint=f"fix models.{name}.revision in the config (a branch, tag or commit hash of {spec.id})",
        )
    if isinstance(exc, GatedRepoError):
        return ModelLoadError(
            f"model {name!r}: {spec.id} is gated and this machine is not authorised",
            hint="accept the model's licence on huggingface.co and set HF_TOKEN for the service",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelLoadError(
            f"model {name!r}: repository {spec.id} does not exist on the hub (or is private)",
            hint=f"fix models.{name}.id in the config",
        )
    if isinstance(exc, LocalEntryNotFoundError) or offline:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        return ModelLoadError(
            f"model {name!r}: {where} is not in the local cache ({hf_cache_dir()}) and {why}",
            hint=fetch_hint,
        )
    return ModelLoadError(f"model {name!r}: cannot download {where}: {exc}", hint=fetch_hint)


def _snapshot(name: str, spec: ModelSpec, *, local_files_only: bool) -> Path:
    """The hub snapshot folder for `spec` (downloaded if allowed); its name is the commit hash."""
    from huggingface_hub import snapshot_download

    offline = hf_offline()
    kwargs: dict[str, Any] = dict(
        repo_id=str(spec.id),
        revision=spec.revision,
        cache_dir=str(hf_cache_dir()),
        local_files_only=local_files_only or offline,
    )
    try:
        path = Path(snapshot_download(allow_patterns=_HUB_PATTERNS, **kwargs))
        if not _weight_files(path):
            # Older repos carry only PyTorch pickles.
            path = Path(snapshot_download(allow_patterns=_HUB_PATTERNS + ["pytorch_model*.bin"], **kwargs))
    except Exception as exc:  # huggingface_hub raises many types (HTTP, OS, connection)
        raise _hub_error(name, spec, exc, offline=offline) from exc
    return path


def fetch(name: str, settings: Settings) -> Path:
    """Download model `name` into the hub cache (a local-directory model is only checked)."""
    spec = resolve_spec(name, settings)
    if spec.path is not None:
        check_local_dir(name, Path(spec.path))
        return Path(spec.path)
    if hf_offline():
        raise ModelLoadError(
            f"cannot fetch model {name!r} ({spec.id}): HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE and run again on a machine with network access",
        )
    return _snapshot(name, spec, local_files_only=False)


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for g in _WEIGHT_GLOBS for p in directory.glob(g))


def check_local_dir(name: str, directory: Path) -> dict[str, Any]:
    """A readable MusicGen checkpoint directory, or a ModelLoadError saying what is wrong; returns its config."""
    made_by = "make one with `dgx-music model init-tiny DIR` or point models.{n}.path at a checkpoint".format(n=name)
    if not directory.exists():
        raise ModelLoadError(f"model {name!r}: directory {directory} does not exist", hint=made_by)
    if not directory.is_dir():
        raise ModelLoadError(f"model {name!r}: {directory} is not a directory", hint=made_by)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"model {name!r}: {directory} has no config.json (not a checkpoint)", hint=made_by)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"model {name!r}: {config_path} is unreadable or not valid JSON: {exc}",
            hint="the checkpoint is damaged: copy or download it again",
        ) from exc
    if not isinstance(config, dict) or config.get("model_type") != "musicgen":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ModelLoadError(
            f"model {name!r}: {directory} holds a {kind!r} checkpoint, not a MusicGen one (model_type 'musicgen')",
            hint="point the config at a MusicGen checkpoint (e.g. facebook/musicgen-small)",
        )
    if not _weight_files(directory):
        raise ModelLoadError(
            f"model {name!r}: {directory} has no weights (*.safetensors or pytorch_model*.bin)",
            hint="the checkpoint is incomplete: copy or download it again",
        )
    if not (directory / "tokenizer.json").is_file() and not (directory / "spiece.model").is_file():
        raise ModelLoadError(
            f"model {name!r}: {directory} has no tokenizer (tokenizer.json or spiece.model)",
            hint="save the processor next to the model (processor.save_pretrained(DIR))",
        )
    return config


def local_revision(directory: Path) -> str:
    """A content fingerprint of a local checkpoint: "local:" + sha256 over its config and weights.

    Weights are sampled (size, first and last MiB per file) so multi-GB checkpoints hash in
    milliseconds while any re-initialised or re-trained weights still change the fingerprint.
    """
    h = hashlib.sha256()
    for fname in ("config.json", "generation_config.json", "tokenizer.json"):
        f = directory / fname
        if f.is_file():
            h.update(fname.encode() + b"\0" + f.read_bytes())
    chunk = 1 << 20
    for f in _weight_files(directory):
        size = f.stat().st_size
        h.update(f.name.encode() + b"\0" + str(size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(chunk))
            if size > 2 * chunk:
                fh.seek(size - chunk)
                h.update(fh.read(chunk))
    return "local:" + h.hexdigest()


def load_checkpoint(name: str, settings: Settings, *, device: Any, dtype: Any) -> LoadedCheckpoint:
    """Processor + MusicgenForConditionalGeneration for model `name`, on `device` in `dtype`, in eval mode."""
    import torch

    spec = resolve_spec(name, settings)
    if spec.path is not None:
        directory = Path(spec.path).expanduser()
        check_local_dir(name, directory)
        revision = local_revision(directory)
        source = str(directory)
    else:
        directory = _snapshot(name, spec, local_files_only=False)
        check_local_dir(name, directory)
        revision = directory.name  # snapshots/<commit hash>
        source = str(spec.id)
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    try:
        with _quiet_transformers():
            processor = AutoProcessor.from_pretrained(directory)
            model, info = MusicgenForConditionalGeneration.from_pretrained(
                directory, dtype=dtype, output_loading_info=True
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise _oom_at_load(name, device, exc) from exc
        raise ModelLoadError(
            f"model {name!r}: cannot load the checkpoint in {directory}: {exc}",
            hint="the checkpoint is damaged or from an incompatible version: copy or download it again",
        ) from exc
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise ModelLoadError(
            f"model {name!r}: the checkpoint in {directory} lacks {len(missing)} weight tensors "
            f"(e.g. {', '.join(sorted(missing)[:3])}); they would be random",
            hint="the checkpoint is incomplete: copy or download it again",
        )
    unexpected = list(info.get("unexpected_keys") or [])
    if unexpected:
        log.warning("model %s: %d tensors in %s are not used by MusicGen (e.g. %s)", name, len(unexpected),
                    directory, ", ".join(sorted(unexpected)[:3]))
    try:
        model = model.to(device)
    except torch.OutOfMemoryError as exc:
        del model
        _free_accelerator()
        raise _oom_at_load(name, device, exc) from exc
    model.eval()
    return LoadedCheckpoint(name=name, source=source, revision=revision, model=model, processor=processor)


def _oom_at_load(name: str, device: Any, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"model {name!r}: out of memory moving the weights to {device}: {exc}",
        hint="free the GPU (other processes: nvidia-smi), use dtype float16/bfloat16, or a smaller model",
    )


def _free_accelerator() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
