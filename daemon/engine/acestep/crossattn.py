"""Cross-attention keys and values of the conditioning, computed once per call instead of per step.

The DiT's cross-attention projects the same conditioning (prompt, lyrics, timbre) to keys and
values at every denoising step; within one call they never change. `cached_cross_attention(
transformer, conditioning)` computes each cross-attention layer's keys and values of that
conditioning before the first step, with the layer's own projections and norm, and the layers
reuse them; everything else is diffusers' `AceStepAttnProcessor2_0` unchanged (the same
projections, norms and attention call), so the result is bitwise the same. Flash-attention
backends (padding masks, windows) are passed to diffusers' processor untouched.

The keys and values are made before the call rather than at its first step so that the
processor has no branch and no state that changes between steps: a compiled DiT
(`acestep.compiled`) then traces one graph for every step and every call.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@functools.cache
def _processor_class() -> type:
    # One class for the process: a compiled DiT guards on the processor's type, and a class made
    # per call would make every call compile again.
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.transformers.ace_step_transformer import (
        _FLASH_ATTENTION_BACKENDS,
        AceStepAttnProcessor2_0,
        _get_current_attention_backend,
    )

    class CachedCrossAttnProcessor(AceStepAttnProcessor2_0):
        """AceStepAttnProcessor2_0 with a cross-attention layer's keys and values made in advance."""

        def __init__(self, inner: Any, key: torch.Tensor, value: torch.Tensor) -> None:
            super().__init__()
            self.inner = inner
            # A backend chosen with diffusers' set_attention_backend lives on the processor.
            self._attention_backend = getattr(inner, "_attention_backend", None)
            self._parallel_config = getattr(inner, "_parallel_config", None)
            self.key, self.value = key, value

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
            out = dispatch_attention_fn(
                query,
                self.key,
                self.value,
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
def cached_cross_attention(
    transformer: Any, conditioning: torch.Tensor, *, enabled: bool = True
) -> Iterator[None]:
    """Within the block, the transformer's cross-attention layers use the keys and values of
    `conditioning` (the `encoder_hidden_states` every step of the call passes).

    Only for calls whose conditioning is the same at every step (one render); the processors are
    put back on exit, whatever happens."""
    if not enabled:
        yield
        return
    cls = _processor_class()
    saved: list[tuple[Any, Any]] = []
    try:
        # As the DiT's forward does before its layers, on the conditioning it is given.
        states = transformer.condition_embedder(conditioning)
        for block in transformer.layers:
            attn = getattr(block, "cross_attn", None)
            if attn is None:
                continue
            key = attn.norm_k(attn.to_k(states).unflatten(-1, (attn.kv_heads, attn.head_dim)))
            value = attn.to_v(states).unflatten(-1, (attn.kv_heads, attn.head_dim))
            saved.append((attn, attn.processor))
            attn.set_processor(cls(attn.processor, key, value))
        del states
        yield
    finally:
        for attn, processor in saved:
            attn.set_processor(processor)
