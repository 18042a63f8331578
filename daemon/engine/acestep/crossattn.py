"""Cross-attention keys and values of the conditioning, computed once per call instead of per step.

The DiT's cross-attention projects the same conditioning (prompt, lyrics, timbre) to keys and
values at every denoising step; within one call they never change. Inside
`cached_cross_attention(transformer)` each cross-attention layer keeps the keys and values it
computed at the first step, for conditioning of the same shape, and reuses them; everything else is
diffusers' `AceStepAttnProcessor2_0` unchanged (the same projections, norms and attention call), so
the result is bitwise the same. Flash-attention backends (padding masks, windows) are passed to
diffusers' processor untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _processor_class() -> type:
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.transformers.ace_step_transformer import (
        _FLASH_ATTENTION_BACKENDS,
        AceStepAttnProcessor2_0,
        _get_current_attention_backend,
    )

    class CachedCrossAttnProcessor(AceStepAttnProcessor2_0):
        """AceStepAttnProcessor2_0 that keeps a cross-attention layer's keys and values."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            # A backend chosen with diffusers' set_attention_backend lives on the processor.
            self._attention_backend = getattr(inner, "_attention_backend", None)
            self._parallel_config = getattr(inner, "_parallel_config", None)
            self.kv: tuple[torch.Size, torch.Tensor, torch.Tensor] | None = None

        def __call__(
            self,
            attn: Any,
            hidden_states: torch.Tensor,
            encoder_hidden_states: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            image_rotary_emb: Any = None,
        ) -> torch.Tensor:
            cross = attn.is_cross_attention and encoder_hidden_states is not None
            if not cross or _get_current_attention_backend(self) in _FLASH_ATTENTION_BACKENDS:
                return self.inner(
                    attn,
                    hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    image_rotary_emb=image_rotary_emb,
                )
            query = attn.to_q(hidden_states).unflatten(-1, (attn.heads, attn.head_dim))
            query = attn.norm_q(query)
            if self.kv is None or self.kv[0] != encoder_hidden_states.shape:
                key = attn.to_k(encoder_hidden_states).unflatten(-1, (attn.kv_heads, attn.head_dim))
                value = attn.to_v(encoder_hidden_states).unflatten(-1, (attn.kv_heads, attn.head_dim))
                self.kv = (encoder_hidden_states.shape, attn.norm_k(key), value)
            _, key, value = self.kv
            out = dispatch_attention_fn(
                query,
                key,
                value,
                attn_mask=attention_mask,
                dropout_p=attn.dropout if attn.training else 0.0,
                scale=attn.scaling,
                enable_gqa=attn.heads != attn.kv_heads,
                attention_kwargs=None,
                backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )
            out = out.flatten(2, 3).to(query.dtype)
            return attn.to_out[1](attn.to_out[0](out))

    return CachedCrossAttnProcessor


@contextmanager
def cached_cross_attention(transformer: Any, *, enabled: bool = True) -> Iterator[None]:
    """Within the block, the transformer's cross-attention layers reuse their keys and values.

    Only for calls whose conditioning is the same at every step (one render); the processors are
    put back on exit, whatever happens."""
    if not enabled:
        yield
        return
    cls = _processor_class()
    saved: list[tuple[Any, Any]] = []
    try:
        for block in transformer.layers:
            attn = getattr(block, "cross_attn", None)
            if attn is None:
                continue
            saved.append((attn, attn.processor))
            attn.set_processor(cls(attn.processor))
        yield
    finally:
        for attn, processor in saved:
            attn.set_processor(processor)
