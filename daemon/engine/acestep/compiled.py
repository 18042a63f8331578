"""The ACE-Step DiT under `torch.compile`, and the one place it is decided whether it runs so.

`compile_mode` resolves the `compile` setting for a device (auto: on CUDA only, where fused
kernels can pay; on the CPU a compile lengthens every load and gained nothing measurable on the
tiny pipeline: docs/gpu.md). `CompiledDit` is
called exactly as the transformer is; inductor compiles it with dynamic shapes, so songs of
another length or row count reuse the compiled code instead of compiling again. The model
compiles it during its warm-up, so the first job does not pay, and a compile that fails leaves
the DiT eager with the reason in the decode setup (`AceStepModel`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F

from daemon.core.config import Settings

ON, OFF = "on", "off"


def compile_mode(settings: Settings, device: torch.device) -> str:
    """`on` or `off`: whether the DiT of a model on `device` runs compiled."""
    if settings.compile == "auto":
        return ON if device.type == "cuda" else OFF
    return settings.compile


def is_compile_error(exc: BaseException) -> bool:
    """Whether `exc` came from compiling (tracing, lowering, building kernels), not from the song:
    then the DiT can go on eager."""
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(exc, TorchDynamoException)


def compile_error(exc: BaseException) -> str:
    """The reason a person reads in the setup: what the compiler raised (the error inside dynamo's
    wrapper), its first line."""
    inner = getattr(exc, "inner_exception", None) or exc.__cause__
    cause = inner if isinstance(inner, BaseException) else None
    lines = [line for line in str(cause if cause is not None else exc).splitlines() if line.strip()]
    what = f"{type(cause).__name__}: " if cause is not None else ""
    return f"{type(exc).__name__}: {what}{lines[0].strip() if lines else 'no message'}"[:300]


class CompiledDit:
    """`transformer` compiled by inductor with dynamic shapes, called as the transformer is.

    The latent frames are padded with zeros to whole patches before the call and the output cut
    back, as the transformer's own forward does; done here, the compiled code sees one parity of
    length and needs no second graph for odd lengths."""

    def __init__(self, transformer: Any) -> None:
        self.transformer = transformer
        self.patch = int(transformer.config.patch_size)
        self._compiled = torch.compile(transformer, dynamic=True)

    def __call__(
        self,
        *,
        hidden_states: torch.Tensor,
        context_latents: torch.Tensor,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor]:
        frames = hidden_states.shape[1]
        pad = -frames % self.patch
        if pad:
            hidden_states = F.pad(hidden_states, (0, 0, 0, pad))
            context_latents = F.pad(context_latents, (0, 0, 0, pad))
        # Without duck shapes: a song whose latent frames happen to equal a width of the model (or
        # the conditioning's length) would otherwise tie the two and compile for that length alone.
        with fx_config.patch(use_duck_shape=False):
            out = self._compiled(
                hidden_states=hidden_states, context_latents=context_latents, return_dict=False, **kwargs
            )[0]
        return (out[:, :frames],)
