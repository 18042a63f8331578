"""Made-up MusicGen checkpoints, built offline: a tiny random one and random ones at the real shapes.

Tools, not the daemon's path: `dgx-music model init-tiny` / `init-random`, `bench --tiny/--shape`,
`demo` and the tests use them. Each is an ordinary `save_pretrained` folder with a `tokenizers`
Unigram tokenizer (transformers 5.x's T5 tokenizer loads nothing else), loaded by the production
loader (`daemon.engine.checkpoints.load_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from daemon.engine.checkpoints import quiet_transformers

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


def _save_checkpoint(
    directory: Path,
    *,
    text_encoder: dict[str, Any],
    audio_encoder: dict[str, Any],
    decoder: dict[str, Any],
    seed: int,
    dtype: str = "float32",
    melody: bool = False,
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
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        if melody:
            from transformers import (
                MusicgenMelodyConfig,
                MusicgenMelodyDecoderConfig,
                MusicgenMelodyForConditionalGeneration,
            )

            from daemon.engine.melody import ChromaParams

            chroma = ChromaParams(sampling_rate=audio_encoder["sampling_rate"])
            config: Any = MusicgenMelodyConfig(
                text_encoder=T5Config(**text_encoder),
                audio_encoder=EncodecConfig(**audio_encoder),
                decoder=MusicgenMelodyDecoderConfig(**decoder),
                num_chroma=chroma.num_chroma,
                chroma_length=chroma.chunk_length * chroma.sampling_rate // chroma.hop_length + 1,
            )
            torch.manual_seed(seed)
            model: Any = MusicgenMelodyForConditionalGeneration(config)
        else:
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
        if melody:
            # The tokenizer, and the chroma parameters as the hub's musicgen-melody ships them (its
            # feature extractor class needs torchaudio; daemon.engine.melody computes the same chroma).
            build_tokenizer().save_pretrained(directory)
            pre = json.dumps(chroma.preprocessor_config(), indent=2) + "\n"
            (directory / "preprocessor_config.json").write_text(pre)
        else:
            # The feature extractor describes the codec's input (mono EnCodec even for stereo MusicGen).
            processor = _build_processor(audio_encoder["sampling_rate"], audio_encoder["audio_channels"])
            processor.save_pretrained(directory)
    # safetensors writes 0600; the daemon's system user must be able to read a checkpoint an admin made.
    for f in directory.iterdir():
        if f.is_file():
            f.chmod(0o644)
    return directory


# The tiny model's text encoder: a prompt's text states, in a few kilobytes.
_TINY_TEXT: dict[str, Any] = dict(
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=1,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)


def _tiny_codec(codebook_size: int) -> dict[str, Any]:
    return dict(
        sampling_rate=32000,
        audio_channels=1,
        target_bandwidths=[1.0],
        upsampling_ratios=[8, 5, 4, 5],
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        num_lstm_layers=1,
        codebook_size=codebook_size,
        kernel_size=3,
        last_kernel_size=3,
        residual_kernel_size=3,
        use_causal_conv=False,
        use_conv_shortcut=False,
    )


def init_tiny(directory: Path, *, stereo: bool = False, melody: bool = False, seed: int = 0) -> Path:
    """A tiny random MusicGen checkpoint (about 100k parameters) that decodes fast on a CPU.

    `stereo`: 8 codebooks interleaved left/right (musicgen-stereo-*); `melody`: a musicgen-melody
    checkpoint (chroma conditioning; model_type musicgen_melody), mono or stereo.

    Its codec runs at 32 kHz with a hop of 800 samples: 40 frames per second, deliberately not
    MusicGen's 50 so that nothing downstream can get away with a hard-coded frame rate.
    """
    vocab = len(_vocabulary())
    codebook_size = 64
    return _save_checkpoint(
        directory,
        text_encoder=dict(vocab_size=vocab, **_TINY_TEXT),
        audio_encoder=_tiny_codec(codebook_size),
        decoder=dict(
            vocab_size=codebook_size,
            hidden_size=_TINY_DECODER[0],
            num_hidden_layers=_TINY_DECODER[1],
            num_attention_heads=_TINY_DECODER[2],
            ffn_dim=_TINY_DECODER[3],
            num_codebooks=8 if stereo else 4,
            audio_channels=2 if stereo else 1,
            max_position_embeddings=4096,
            pad_token_id=codebook_size,
            bos_token_id=codebook_size,
            dropout=0.0,
        ),
        seed=seed,
        melody=melody,
    )


# The real MusicGen shapes (audiocraft / facebook/musicgen-*): decoder width, depth, heads, FFN.
_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "small": (1024, 24, 16, 4096),
    "medium": (1536, 48, 24, 6144),
    "large": (2048, 48, 32, 8192),
}


# The tiny model's decoder, in the same terms: width, depth, heads, FFN.
_TINY_DECODER = (32, 2, 4, 64)


def decoder_dims(shape: str) -> dict[str, int]:
    """The decoder of `shape` (tiny, small, medium, large): what a decode step reads, in numbers."""
    hidden, layers, heads, ffn = _TINY_DECODER if shape == "tiny" else _SHAPES[shape]
    vocab = 64 if shape == "tiny" else 2048
    return {"hidden": hidden, "layers": layers, "heads": heads, "ffn": ffn, "vocab": vocab, "codebooks": 4}


# EnCodec as facebook/encodec_32khz, the codec of every musicgen-{small,medium,large}.
ENCODEC_32KHZ: dict[str, Any] = dict(
    sampling_rate=32000,
    audio_channels=1,
    target_bandwidths=[2.2],
    upsampling_ratios=[8, 5, 4, 4],
    hidden_size=128,
    num_filters=64,
    num_residual_layers=1,
    num_lstm_layers=2,
    codebook_size=2048,
    use_causal_conv=False,
    use_conv_shortcut=False,
    normalize=False,
)


def init_random(
    directory: Path, shape: Shape, *, seed: int = 0, dtype: str = "float32", layers: int | None = None
) -> Path:
    """Random weights at the real musicgen-{small,medium,large} shapes, for benchmarks without downloads.

    Text encoder at t5-base's shape, EnCodec as facebook/encodec_32khz (hop 640: 50 frames/s).
    `layers` keeps every width, head count and FFN size but stacks that many layers in the decoder
    and in the text encoder: what a kernel or a decode loop does is per layer, so a CPU test proves
    it on two layers in a fraction of the time (bfloat16 matmuls are slow on CPUs without AVX512).
    """
    if shape not in _SHAPES:
        raise ValueError(f"shape must be one of {', '.join(_SHAPES)}, not {shape!r}")
    depth = _SHAPES[shape][1]
    if layers is not None and not 1 <= layers <= depth:
        raise ValueError(f"layers must be between 1 and {depth} for musicgen-{shape}, not {layers}")
    return _save_checkpoint(
        directory,
        text_encoder=dict(
            vocab_size=32128,
            d_model=768,
            d_kv=64,
            d_ff=3072,
            num_layers=12 if layers is None else min(layers, 12),
            num_heads=12,
            feed_forward_proj="relu",
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        ),
        audio_encoder=dict(ENCODEC_32KHZ),
        decoder=_real_decoder(shape, layers),
        seed=seed,
        dtype=dtype,
    )


def _real_decoder(shape: Shape, layers: int | None = None) -> dict[str, Any]:
    """The decoder config of musicgen-{shape}, with `layers` layers (None: all of them)."""
    hidden, depth, heads, ffn = _SHAPES[shape]
    return dict(
        vocab_size=2048,
        hidden_size=hidden,
        num_hidden_layers=depth if layers is None else layers,
        num_attention_heads=heads,
        ffn_dim=ffn,
        num_codebooks=4,
        audio_channels=1,
        max_position_embeddings=2048,
        pad_token_id=2048,
        bos_token_id=2048,
    )


def init_decoder_shape(directory: Path, shape: Shape, *, layers: int = 2, seed: int = 0) -> Path:
    """The decoder of musicgen-{shape} (its width, heads, MLP, codebooks and vocabulary) with only
    `layers` layers, behind the tiny model's text encoder and codec: a decode step at the real
    shape, per layer, built in seconds (the kernels a step launches do not depend on the text
    encoder or the codec)."""
    if shape not in _SHAPES:
        raise ValueError(f"shape must be one of {', '.join(_SHAPES)}, not {shape!r}")
    return _save_checkpoint(
        directory,
        text_encoder=dict(vocab_size=len(_vocabulary()), **_TINY_TEXT),
        audio_encoder=_tiny_codec(2048),
        decoder=_real_decoder(shape, layers),
        seed=seed,
    )
