"""Made-up ACE-Step 1.5 checkpoints, built offline: a tiny random one and one at the real turbo shape.

Tools, not the daemon's path: `dgx-music model init-tiny --family ace-step` / `init-random --family
ace-step`, `bench --family ace-step`, `demo` and the tests use them. Each is an ordinary
`AceStepPipeline.save_pretrained` folder (model_index.json and one subfolder per component) with
a byte-level BPE tokenizer trained here by `tokenizers` on a few hundred words, loaded by the
production loader (`daemon.engine.acestep.checkpoint.load_pipeline`), so tests exercise it.

The tiny one's VAE hops 1536 samples at 48 kHz (31.25 latent frames a second), deliberately not
ACE-Step's 1920 (25 a second), so that nothing downstream can get away with a hard-coded latent rate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from daemon.ops.tinymodel import _MUSIC_WORDS

Variant = Literal["turbo", "base"]
VARIANTS: tuple[str, ...] = ("turbo", "base")

# What the weights are published under, written as a model card the loader reads (the real
# ACE-Step 1.5 checkpoints are MIT-licensed).
_LICENSE = "mit"

# Text the pipeline wraps every prompt and lyric in (its SFT template), plus section tags: BPE
# merges for them keep the tiny model's token counts close to what a real tokenizer produces.
_TEMPLATE_TEXT = """
# Instruction
Fill the audio semantic mask based on the given conditions:
Repaint the mask area based on the given conditions:
Generate audio semantic tokens based on the given conditions:
Extract the track from the audio:
# Caption
# Metas
- bpm: N/A
- timesignature: 4
- keyscale: C major A minor F# minor Bb major
- duration: 30 seconds
# Languages
en de fr es it ja zh ko pt ru
# Lyric
[verse] [chorus] [bridge] [intro] [outro] [pre-chorus] [hook] [instrumental]
"""

_EOT = "<|endoftext|>"


def build_tokenizer() -> Any:
    """A byte-level BPE tokenizer (any text, any language, no unknown token) trained offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=768,
        special_tokens=[_EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [_TEMPLATE_TEXT] * 4 + [" ".join(_MUSIC_WORDS)] * 2 + [w.capitalize() for w in _MUSIC_WORDS]
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=_EOT,
        pad_token=_EOT,
        padding_side="right",
        model_max_length=4096,
    )


def _model_card(variant: str, what: str) -> str:
    return (
        f"---\nlicense: {_LICENSE}\nlibrary_name: diffusers\ntags:\n- ace-step\n- text-to-audio\n---\n\n"
        f"# {what}\n\nRandom weights in the shape of an ACE-Step 1.5 {variant} checkpoint, made offline by "
        "dgx-music for tests and benchmarks. It makes noise, not music.\n"
    )


def _pipeline(
    *,
    text: dict[str, Any],
    dit: dict[str, Any],
    cond: dict[str, Any],
    vae: dict[str, Any],
    variant: str,
    seed: int,
    fast_init: bool,
    tokens: dict[str, Any] | None = None,
) -> Any:
    import torch
    from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import AceStepConditionEncoder
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = build_tokenizer()
    turbo = variant == "turbo"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts: dict[str, Any] = {}
        builders = {
            "text_encoder": lambda: Qwen3Model(Qwen3Config(**text)),
            "transformer": lambda: AceStepTransformer1DModel(is_turbo=turbo, model_version=variant, **dit),
            "condition_encoder": lambda: AceStepConditionEncoder(**cond),
            "vae": lambda: AutoencoderOobleck(**vae),
        }
        if tokens is not None:
            # The 5 Hz audio tokenizer and its detokenizer a cover reads its source through.
            from diffusers.pipelines.ace_step.modeling_ace_step import (
                AceStepAudioTokenDetokenizer,
                AceStepAudioTokenizer,
            )

            builders["audio_tokenizer"] = lambda: AceStepAudioTokenizer(**tokens)
            detok = {k: v for k, v in tokens.items() if k not in ("fsq_dim", "fsq_input_levels")}
            builders["audio_token_detokenizer"] = lambda: AceStepAudioTokenDetokenizer(**detok)
        for name, build in builders.items():
            if fast_init:
                # Billions of parameters: allocate without the per-layer initialisers (minutes on a
                # CPU), then fill every tensor with small normal noise.
                with torch.device("meta"):
                    module = build()
                module = module.to_empty(device="cpu")
                with torch.no_grad():
                    for tensor in list(module.parameters()) + list(module.buffers()):
                        if tensor.is_floating_point():
                            tensor.normal_(0.0, 0.02)
            else:
                module = build()
            parts[name] = module.eval()
        with torch.no_grad():
            # The learned silence the timbre encoder reads when no reference audio is given: noise
            # instead of the constructor's zeros, so that the conditioning is not degenerate.
            silence = parts["condition_encoder"].silence_latent
            silence.copy_(torch.randn(silence.shape) * 0.5)
    return AceStepPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
        tokenizer=tokenizer,
        **parts,
    )


def _save(pipe: Any, directory: Path, *, dtype: str, card: str) -> Path:
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if dtype != "float32":
        for name in ("text_encoder", "transformer", "condition_encoder", "vae"):
            getattr(pipe, name).to(getattr(torch, dtype))
    pipe.save_pretrained(directory, safe_serialization=True)
    (directory / "README.md").write_text(card, encoding="utf-8")
    # safetensors writes 0600; the daemon's system user must be able to read a checkpoint an admin made.
    for f in directory.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    return directory


# The tiny pipeline's VAE (AutoencoderOobleck's arguments): 8 latent channels, a 1536-sample hop.
TINY_VAE: dict[str, Any] = dict(
    # The encoder gives mean and scale: twice the latent channels the decoder reads.
    encoder_hidden_size=16,
    downsampling_ratios=[2, 4, 4, 6, 8],
    channel_multiples=[1, 1, 1, 1, 1],
    decoder_channels=4,
    decoder_input_channels=8,
    audio_channels=2,
    sampling_rate=48000,
)


def tiny_pipeline(*, variant: Variant = "turbo", seed: int = 0) -> Any:
    """The tiny random AceStepPipeline of `init_tiny`, in memory (about 200k parameters)."""
    acoustic = 8
    width = 32
    tokenizer_size = len(build_tokenizer())
    return _pipeline(
        text=dict(
            hidden_size=width,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=tokenizer_size,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        ),
        dit=dict(
            hidden_size=width,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            in_channels=3 * acoustic,  # noise + source latents + chunk mask
            audio_acoustic_hidden_dim=acoustic,
            patch_size=2,
            rope_theta=10000.0,
            sliding_window=16,
        ),
        cond=dict(
            hidden_size=width,
            intermediate_size=64,
            text_hidden_dim=width,
            timbre_hidden_dim=acoustic,
            num_lyric_encoder_hidden_layers=2,
            num_timbre_encoder_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            rope_theta=10000.0,
            sliding_window=16,
        ),
        tokens=dict(
            hidden_size=width,
            intermediate_size=64,
            audio_acoustic_hidden_dim=acoustic,
            pool_window_size=5,
            fsq_dim=width,
            fsq_input_levels=[8, 5, 5],
            num_attention_pooler_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            rope_theta=10000.0,
            sliding_window=16,
        ),
        vae=TINY_VAE,
        variant=variant,
        seed=seed,
        fast_init=False,
    )


def init_tiny(directory: Path, *, variant: Variant = "turbo", seed: int = 0) -> Path:
    """A tiny random ACE-Step 1.5 checkpoint that generates a song in well under a second on a CPU.

    `variant`: "turbo" (guidance distilled into the weights: no classifier-free guidance) or "base"
    (guided with the condition encoder's learned null embedding)."""
    pipe = tiny_pipeline(variant=variant, seed=seed)
    return _save(pipe, directory, dtype="float32", card=_model_card(variant, "Tiny random ACE-Step 1.5"))


def real_pipeline(*, variant: Variant = "turbo", seed: int = 0) -> Any:
    """An AceStepPipeline at ACE-Step 1.5's real shape (a 2B-parameter DiT with its condition
    encoder, Qwen3-Embedding-0.6B as text encoder, the 48 kHz stereo Oobleck VAE), random weights,
    in memory and float32 (about 13 GB)."""
    return _pipeline(
        # Qwen3-Embedding-0.6B.
        text=dict(
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151669,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
        # The DiT and condition encoder constructors default to the 1.5 (non-XL) shape.
        dit=dict(),
        cond=dict(text_hidden_dim=1024),
        vae=dict(
            encoder_hidden_size=128,
            downsampling_ratios=[2, 4, 4, 6, 10],
            channel_multiples=[1, 2, 4, 8, 16],
            decoder_channels=128,
            decoder_input_channels=64,
            audio_channels=2,
            sampling_rate=48000,
        ),
        variant=variant,
        seed=seed,
        fast_init=True,
    )


def init_random(
    directory: Path, *, variant: Variant = "turbo", seed: int = 0, dtype: str = "bfloat16"
) -> Path:
    """`real_pipeline` written to `directory` (bfloat16 by default: about 7 GB on disk)."""
    pipe = real_pipeline(variant=variant, seed=seed)
    return _save(pipe, directory, dtype=dtype, card=_model_card(variant, f"Random ACE-Step 1.5 {variant}"))


def parameter_count(pipe: Any) -> int:
    """Parameters of the pipeline's networks (text encoder, DiT, condition encoder, VAE)."""
    return int(
        sum(
            p.numel()
            for name in ("text_encoder", "transformer", "condition_encoder", "vae")
            for p in getattr(pipe, name).parameters()
        )
    )


def latent_rate(pipe: Any) -> float:
    """Latent frames per second of the pipeline's VAE."""
    return float(pipe.vae.config.sampling_rate) / float(math.prod(pipe.vae.config.downsampling_ratios))


# A tiny adapter's LoRA targets: the DiT's self-attention and MLP projections.
ADAPTER_TARGETS = (
    "self_attn.to_q",
    "self_attn.to_k",
    "self_attn.to_v",
    "self_attn.to_out.0",
    "mlp.down_proj",
)
ADAPTER_FILE = "pytorch_lora_weights.safetensors"


def init_tiny_adapter(directory: Path, *, seed: int = 1, rank: int = 4) -> Path:
    """A random LoRA adapter for the tiny pipeline's DiT (`init_tiny`), saved as diffusers saves
    one (`directory`/pytorch_lora_weights.safetensors): both factors drawn from noise, so it moves
    the audio the way a trained adapter would, and the same `seed` gives the same file."""
    import torch
    from diffusers import AceStepPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = tiny_pipeline().transformer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=list(ADAPTER_TARGETS), init_lora_weights=False
        )
        transformer.add_adapter(config)
    directory.mkdir(parents=True, exist_ok=True)
    AceStepPipeline.save_lora_weights(
        str(directory),
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        weight_name=ADAPTER_FILE,
    )
    return directory
