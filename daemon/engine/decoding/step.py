"""One MusicGen decoder step, built from the loaded transformers weights: the arithmetic of
`MusicgenDecoder` + `MusicgenForCausalLM`'s heads regrouped into fewer kernels.

q/k/v are one matmul (their weights concatenated once, the originals made views of it, so nothing
is held twice and transformers' own forward reads the same numbers); the new keys/values go into
one [2, rows, heads, capacity, head_dim] cache per layer; each residual add rides on the matmul
before it (`addmm`: greedy tokens still equal transformers', tested); the text's cross-attention
keys/values and its float mask are built once per decode; embeddings are one lookup, the heads one
matmul. That is 13 kernels a layer on ATen ops, 8 with the Triton kernels (`kernels`), which
`kernels_mismatch` checks against the ATen ops on the loaded model first (docs/gpu.md).

With `position` an int the self-attention reads only the filled prefix (as transformers' dynamic
cache); with a device tensor (inside a CUDA graph) it reads all of the `kv` view it is handed, the
unwritten tail hidden by a float mask. On a CPU the matmuls may use oneDNN-packed weights
(`linear`) and the attention runs in float32 (`attention_dtype`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from daemon.core.errors import GenerationError
from daemon.engine.decoding.launches import kernels_problem
from daemon.engine.decoding.linear import Linear, packing_wanted

log = logging.getLogger(__name__)


def kernels() -> Any:
    """The Triton kernels module, imported on first use (it imports Triton)."""
    import daemon.engine.decoding.kernels as module

    return module


def _share(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """Concatenate `tensors` and make each one a view of the result (no second copy kept)."""
    joined = torch.cat([t.detach() for t in tensors], dim=dim)
    offset = 0
    for t in tensors:
        size = t.shape[dim]
        t.data = joined.narrow(dim, offset, size)
        offset += size
    return joined


class FusedLayer(nn.Module):
    """One decoder layer's step; an nn.Module only so that tools can hook its `forward`."""

    def __init__(self, layer: Any, *, pack: bool = False) -> None:
        super().__init__()
        sa, ca = layer.self_attn, layer.encoder_attn
        projections = (sa.q_proj, sa.k_proj, sa.v_proj, sa.out_proj, ca.q_proj, ca.k_proj, ca.v_proj)
        projections += (ca.out_proj, layer.fc1, layer.fc2)
        if any(proj.bias is not None for proj in projections):
            raise ValueError("the fused MusicGen step expects bias-free projections")
        self.heads, self.head_dim, self.scaling = sa.num_heads, sa.head_dim, sa.scaling
        self.norms = (layer.self_attn_layer_norm, layer.encoder_attn_layer_norm, layer.final_layer_norm)
        self.w_qkv = _share([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight])
        self.qkv = Linear(self.w_qkv, pack=pack)
        plain = (sa.out_proj, ca.q_proj, ca.out_proj, layer.fc1, layer.fc2)
        self.o, self.cq, self.co, self.fc1, self.fc2 = (Linear(proj.weight, pack=pack) for proj in plain)
        self.act = layer.activation_fn
        # Set by `FusedDecoder.use_kernels`: the Triton norm-matmul kernels instead of ATen ops.
        self.triton = False
        probe = torch.linspace(-4.0, 4.0, 33, device=layer.fc1.weight.device)
        # The kernels implement exactly this layer's arithmetic only: erf GELU, affine layer norms.
        self.kernel_ready = torch.equal(self.act(probe), F.gelu(probe)) and all(
            norm.weight is not None and norm.bias is not None for norm in self.norms
        )

    @staticmethod
    def _norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def forward(
        self,
        x: torch.Tensor,  # [R*n, E]
        rows: int,
        kv: torch.Tensor,  # [2, R, H, S, D]: the cache, or a view of its first S positions
        position: int | torch.Tensor,
        self_mask: torch.Tensor | None,
        cross: torch.Tensor,  # [2, R, H, T, D]
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        n = x.shape[0] // rows
        h, d = self.heads, self.head_dim
        # Self-attention: one matmul for q, k, v; one write of k and v into the cache (with the
        # Triton kernels, norm + matmul + cache write are one kernel).
        if self.triton:
            q = kernels().norm_qkv(x, self.norms[0], self.w_qkv, kv, position, n)
            q = q.view(rows, n, h, d).transpose(1, 2)
        else:
            qkv = self.qkv.mm(self._norm(self.norms[0], x)).view(rows, n, 3, h, d)
            # The cache's dtype is the attention's (`attention_dtype`): no-op conversions unless they differ.
            q = qkv[:, :, 0].transpose(1, 2).to(kv.dtype)
            new_kv = qkv[:, :, 1:].permute(2, 0, 3, 1, 4)
            if isinstance(position, int):
                kv[:, :, :, position : position + n].copy_(new_kv)
            else:
                # device-side position: stays inside a captured graph
                kv.index_copy_(3, position, new_kv.to(kv.dtype))
        if isinstance(position, int):
            keys, values = kv[0, :, :, : position + n], kv[1, :, :, : position + n]
        else:
            keys, values = kv[0], kv[1]
        attn = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=self_mask, is_causal=self_mask is None and n > 1, scale=self.scaling
        ).to(x.dtype)
        x = self.o.addmm(x, attn.transpose(1, 2).reshape(rows * n, h * d))
        # Cross-attention over the text (keys/values computed once per decode).
        if self.triton:
            q = kernels().norm_linear(x, self.norms[1], self.cq.weight)
        else:
            q = self.cq.mm(self._norm(self.norms[1], x))
        q = q.view(rows, n, h, d).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, cross[0], cross[1], attn_mask=cross_mask, scale=self.scaling)
        x = self.co.addmm(x, attn.transpose(1, 2).reshape(rows * n, h * d))
        # MLP.
        if self.triton:
            hidden = kernels().norm_linear(x, self.norms[2], self.fc1.weight, gelu=True)
        else:
            hidden = self.act(self.fc1.mm(self._norm(self.norms[2], x)))
        return self.fc2.addmm(x, hidden)


class FusedDecoder(nn.Module):
    """The whole decoder step over `FusedLayer`s, plus the once-per-decode cross-attention setup."""

    def __init__(self, parts: Any) -> None:
        super().__init__()
        core = parts.core
        self.core = core
        weight = core.layers[0].fc1.weight
        layer_bytes = sum(p.numel() * p.element_size() for p in core.layers.parameters())
        pack = packing_wanted(weight.device, weight.dtype, layer_bytes)
        self.layers = nn.ModuleList([FusedLayer(layer, pack=pack) for layer in core.layers])
        self.num_codebooks, self.heads_count = parts.num_codebooks, parts.heads_count
        self.head_dim = parts.head_dim
        embeds = [core.embed_tokens[k].weight for k in range(parts.num_codebooks)]
        self.rows_per_codebook = embeds[0].shape[0]
        self.embed = _share(embeds)
        self.kv_dtype = attention_dtype(self.embed.device, self.embed.dtype)
        self.head = _share([head.weight for head in parts.heads])
        self.head_linear = Linear(self.head, pack=pack)
        self.vocab_size = parts.heads[0].weight.shape[0]
        if any(head.bias is not None for head in parts.heads):
            raise ValueError("the fused MusicGen step expects bias-free lm heads")
        cross = [
            (layer.encoder_attn.k_proj.weight, layer.encoder_attn.v_proj.weight) for layer in core.layers
        ]
        self.w_cross = _share([w for pair in cross for w in pair])
        codebooks = torch.arange(parts.num_codebooks, device=self.embed.device)
        self.offsets = (codebooks * self.rows_per_codebook).view(1, -1, 1)
        self.kernels = "aten"

    def use_kernels(self, kind: str) -> None:
        """Run the step on "triton" (the norm-matmul kernels, checked by `kernels_mismatch`) or "aten"."""
        for layer in self.layers:
            layer.triton = kind == "triton"
        self.kernels = kind

    def is_current(self, parts: Any) -> bool:
        """Still the model's storage (a `.to()` or reload gives the model new tensors)."""
        weight = parts.core.layers[0].self_attn.q_proj.weight
        return weight.data_ptr() == self.layers[0].w_qkv.data_ptr() and weight.device == self.embed.device

    def cross_kv(self, states: torch.Tensor, out: torch.Tensor) -> None:
        """`out` [L, 2, R, H, T, D]: the text keys/values of every layer, from encoder states [R, T, E]."""
        rows, length, width = states.shape
        flat = torch.mm(states.reshape(rows * length, width), self.w_cross.t())
        out.copy_(
            flat.view(rows, length, len(self.layers), 2, self.heads_count, self.head_dim).permute(
                2, 3, 0, 4, 1, 5
            )
        )

    def forward(
        self,
        tokens: torch.Tensor,  # [R, K, n]
        kv: torch.Tensor,  # [L, 2, R, H, S, D]: the cache, or a view of its first S positions
        position: int | torch.Tensor,
        self_mask: torch.Tensor | None,
        cross: torch.Tensor,  # [L, 2, R, H, T, D]
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Logits [R, K, V] for the last of `tokens` fed at `position`."""
        rows, _, n = tokens.shape
        core = self.core
        x = F.embedding(tokens + self.offsets, self.embed).sum(dim=1)  # [R, n, E]
        weights = core.embed_positions.weights
        if isinstance(position, int):
            positions = weights[position : position + n]
        else:
            positions = weights.index_select(0, position)
        x = (x + positions.to(x.device)).view(rows * n, -1)
        for index, layer in enumerate(self.layers):
            x = layer(x, rows, kv[index], position, self_mask, cross[index], cross_mask)
        last = x.view(rows, n, -1)[:, -1]
        norm = core.layer_norm
        last = F.layer_norm(last, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return self.head_linear.mm(last).view(rows, self.num_codebooks, self.vocab_size)


def fused_decoder(parts: Any) -> FusedDecoder:
    """The model's fused step, built once per loaded model and kept on it."""
    model = parts.model
    decoder = getattr(model, "_dgx_fused_decoder", None)
    if decoder is None or not decoder.is_current(parts):
        with torch.no_grad():
            decoder = FusedDecoder(parts)
        # Not a submodule of the model (object.__setattr__): its state dict and `.to()` stay transformers'.
        object.__setattr__(model, "_dgx_fused_decoder", decoder)
    return decoder


def attention_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The self-attention's dtype, and so its KV cache's: the model's, except float32 on the CPU,
    whose bfloat16 attention kernels are slow where its bf16 matmuls are fast (docs/gpu.md)."""
    return torch.float32 if device.type == "cpu" else dtype


def float_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """An additive mask (0 visible, -inf hidden) as SDPA itself makes from a bool mask."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.tensor(float("-inf"), dtype=dtype, device=mask.device))


def kernels_mismatch(decoder: FusedDecoder) -> str | None:
    """Why the Triton kernels cannot serve `decoder` (None when they can): each must run and give
    what the ATen ops it replaces give, on the first layer's weights and random rows, to rounding
    (each compared with its own output, so a wrong kernel is not hidden behind the residual); the
    q/k/v kernel must write the step's cache position and nothing else.

    Run once per load before a decode uses them, so a Triton release or GPU that miscompiles the
    kernels costs a warning and the plain ops, never a wrong clip.
    """
    layer = decoder.layers[0]
    if not all(each.kernel_ready for each in decoder.layers):
        return "the model's layers are not the arithmetic the kernels implement (exact GELU, affine norms)"
    fused = kernels()
    dev, dt = layer.w_qkv.device, layer.w_qkv.dtype
    rows, capacity, at = 3, 8, 5
    h, d = layer.heads, layer.head_dim
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((rows, h * d), generator=gen).to(dev, dt)
    cache = torch.randn((2, rows, h, capacity, d), generator=gen).to(dev, decoder.kv_dtype)
    kv = cache.clone()
    norm0, norm1, norm2 = layer.norms
    qkv = layer.qkv.mm(layer._norm(norm0, x)).view(rows, 3, h, d)
    expected = [
        ("q/k/v queries", qkv[:, 0].reshape(rows, h * d)),
        ("cross-attention query", layer.cq.mm(layer._norm(norm1, x))),
        ("fc1 + GELU", layer.act(layer.fc1.mm(layer._norm(norm2, x)))),
        ("keys and values written", qkv[:, 1:].permute(1, 0, 2, 3)),
    ]
    try:
        got = [
            fused.norm_qkv(x, norm0, layer.w_qkv, kv, torch.tensor([at], device=dev), 1),
            fused.norm_linear(x, norm1, layer.cq.weight),
            fused.norm_linear(x, norm2, layer.fc1.weight, gelu=True),
        ]
    except Exception as exc:  # noqa: BLE001 - a compile or launch failure of any kind means "do not use"
        return f"{type(exc).__name__}: {exc}"
    got.append(kv[:, :, :, at])
    others = torch.arange(capacity, device=dev) != at
    if not torch.equal(kv[:, :, :, others], cache[:, :, :, others]):
        return "the q/k/v kernel wrote KV-cache positions other than the step's"
    tolerance = 1e-4 if dt == torch.float32 else 2e-2
    for (name, want), have in zip(expected, got):
        want, have = want.float(), have.float()
        error = ((have - want).norm() / want.norm().clamp_min(1e-12)).item()
        if not error <= tolerance:  # NaN fails too
            return f"the {name} kernel differs from the ATen ops by {error:.2e} (limit {tolerance:.0e})"
    return None


def choose_kernels(setting: str, decoder: FusedDecoder, cuda: bool) -> str:
    """The kernels ("triton" or "aten") the `kernels` setting gives `decoder`'s step: "auto" is
    triton on CUDA when Triton imports and `kernels_mismatch` finds nothing (otherwise aten, with
    one warning saying why); "triton" insists (a GenerationError with a hint when it cannot)."""
    if setting == "aten" or (setting == "auto" and not cuda):
        return "aten"
    with torch.inference_mode():
        why = kernels_problem(decoder.embed.device) or kernels_mismatch(decoder)
    if why is None:
        return "triton"
    if setting == "triton":
        raise GenerationError(
            f"the Triton kernels cannot run this model: {why}",
            hint="set `kernels: aten` (or auto) in the config",
        )
    log.warning("decoding with plain PyTorch ops, not the fused Triton kernels: %s", why)
    return "aten"
