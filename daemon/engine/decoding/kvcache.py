"""A pre-allocated key/value cache that transformers' MusicGen attention modules write into.

`MusicgenAttention` talks to its cache through transformers' `Cache` API: self-attention calls
`update(keys, values, layer_idx)` and uses what it returns; cross-attention computes the text
keys/values once, stores them through `update`, and afterwards (once `is_updated[layer_idx]` is
set) reads `cross_attention_cache.layers[layer_idx].keys/.values`. Subclassing
`EncoderDecoderCache` is what makes the attention take that encoder-decoder path, so the layers
run unmodified while every buffer here is allocated once per decode (or once per CUDA-graph bucket).

Two ways to read the self-attention cache:
  * sliced (eager decoding, and every prefill): `update` returns the filled prefix only, so the
    attention sees exactly the shapes transformers' dynamic cache gives it (token-identical greedy
    output on CPU) and no mask is needed;
  * full (inside a captured CUDA graph): `update` writes at a position held in a device tensor and
    returns the whole buffer; the caller masks the unwritten tail. Shapes and addresses never change,
    which is what graph replay needs.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, EncoderDecoderCache


class StaticSelfAttentionLayer(CacheLayerMixin):
    """One decoder layer's self-attention keys/values: [rows, heads, capacity, head_dim]."""

    is_compileable = True

    def __init__(self, owner: StaticKVCache, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self._owner = owner
        self.keys = keys
        self.values = values
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # Buffers are allocated up front; nothing is ever created lazily.
        return None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        owner = self._owner
        n = key_states.shape[-2]
        if owner.graph_mode:
            # index_copy_ with a device-side index keeps the write inside the captured graph.
            index = owner.position_tensor
            if n != 1:
                index = index + torch.arange(n, device=key_states.device)
            self.keys.index_copy_(2, index, key_states)
            self.values.index_copy_(2, index, value_states)
            return self.keys, self.values
        start = owner.position
        end = start + n
        if end > self.keys.shape[2]:
            raise RuntimeError(
                f"KV cache overflow: writing positions {start}..{end - 1} into a cache of {self.keys.shape[2]}"
            )
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0

    def get_seq_length(self) -> int:
        return self._owner.position

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class CrossAttentionLayer(CacheLayerMixin):
    """One decoder layer's cross-attention keys/values over the text: computed once per decode."""

    is_compileable = True

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None) -> None:
        super().__init__()
        self.keys = keys
        self.values = values
        self.is_initialized = keys is not None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is not None and self.keys.shape == key_states.shape:
            # Static buffers (CUDA-graph buckets) keep their address: copy into them.
            self.keys.copy_(key_states)
            self.values.copy_(value_states)
            return self.keys, self.values
        self.keys = key_states
        self.values = value_states
        self.is_initialized = True
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return (0 if self.keys is None else self.keys.shape[2]), 0

    def get_seq_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def get_max_length(self) -> int:
        return -1


class StaticKVCache(EncoderDecoderCache):
    """Self-attention buffers sized for a whole decode plus cross-attention slots for the text.

    `position` (a Python int) is where the next forward's tokens go; the decode loop sets it before
    each forward. In graph mode `position_tensor` (a 1-element long tensor on the device) plays that
    role so a captured step can advance it without the host.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        rows: int,
        heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
        cross_keys: list[torch.Tensor] | None = None,
        cross_values: list[torch.Tensor] | None = None,
    ) -> None:
        self.position = 0
        self.graph_mode = False
        self.position_tensor = torch.zeros(1, dtype=torch.long, device=device)
        shape = (rows, heads, capacity, head_dim)
        self_layers: list[CacheLayerMixin] = [
            StaticSelfAttentionLayer(
                self,
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(num_layers)
        ]
        if cross_keys is not None and cross_values is not None:
            cross_layers: list[CacheLayerMixin] = [
                CrossAttentionLayer(k, v) for k, v in zip(cross_keys, cross_values, strict=True)
            ]
        else:
            cross_layers = [CrossAttentionLayer() for _ in range(num_layers)]
        super().__init__(Cache(layers=self_layers), Cache(layers=cross_layers))
        self.capacity = capacity
        self.rows = rows
        self.reset_for_decode()

    def reset_for_decode(self) -> None:
        """Start a new decode: position 0, cross-attention to be recomputed from the new text."""
        self.position = 0
        self.position_tensor.zero_()
        self.graph_mode = False
        for idx in range(len(self.cross_attention_cache.layers)):
            self.is_updated[idx] = False

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.position

    def nbytes(self) -> int:
        total = 0
        for cache in (self.self_attention_cache, self.cross_attention_cache):
            for layer in cache.layers:
                if layer.keys is not None:
                    total += layer.keys.numel() * layer.keys.element_size() * 2
        return total
