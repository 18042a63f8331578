"""Counting the ATen ops that do work in one decode step of the dgx loop (`dgx-music bench --ops`).

On CPU this is a faithful proxy for the kernels a CUDA graph of the step replays: every op that
reads or writes tensor memory is one kernel launch there, while views, reshapes, metadata queries
and identities (eval-mode dropout, detach, aliasing) launch nothing. Those are left out
(`FREE_OPS`); everything else is counted, by name, and attributed to the decoder layer whose
`forward` was running (module hooks on the step's layers), so the report splits into ops per layer
and the rest (embeddings, final norm, heads, sampling, the step's bookkeeping).

A Triton kernel of the fused step (`kernels="triton"`) is one op too, named `triton:<kernel>`: its
launch is announced by `daemon.engine.decoding.launches`, since a dispatch mode cannot see it (on a
CPU the kernel runs in Triton's interpreter, whose tensor bookkeeping is not counted).

An op that CUDA runs as more than one kernel counts as all of them (`hidden_kernels`): the copy
an out-of-place `addmm` makes of its 2-D input before cuBLAS adds into it, the clone behind a
functional `masked_fill` or `scatter`, the index fill and value copy of a small-segment `sort`.
The step is counted as CUDA runs it: on plain matmuls (the oneDNN-packed ones are the CPU's).

The step counted is exactly the body a CUDA graph captures (`GraphBucket._step`, run here without
capture on any device), after a short decode has filled the bucket with real state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that launch no kernel: views and reshapes (they only make new metadata), identities and
# aliasing (eval-mode dropout returns its input; detach/alias/lift_fresh share storage), and
# metadata queries. Matched on the op's overload packet name (`aten.view.default` -> "view").
FREE_OPS: frozenset[str] = frozenset(
    {
        # views and reshapes
        "view",
        "_unsafe_view",
        "reshape",
        "_reshape_alias",
        "as_strided",
        "expand",
        "expand_as",
        "permute",
        "transpose",
        "t",
        "squeeze",
        "unsqueeze",
        "select",
        "slice",
        "narrow",
        "split",
        "split_with_sizes",
        "unbind",
        "chunk",
        "unflatten",
        "flatten",
        "view_as",
        "diagonal",
        "movedim",
        "swapaxes",
        "unfold",
        "view_as_real",
        "view_as_complex",
        "_unsafe_split",
        # identities and aliasing
        "dropout",
        "native_dropout",
        "feature_dropout",
        "alpha_dropout",
        "detach",
        "alias",
        "lift_fresh",
        "lift_fresh_copy",
        "_conj",
        "conj",
        "resolve_conj",
        "resolve_neg",
        "_neg_view",
        "contiguous",  # a no-op on a contiguous tensor; a real copy shows up as clone/copy_
        # allocations (a kernel's output buffer; inside a CUDA graph not even that)
        "empty",
        "empty_strided",
        "empty_like",
        # metadata queries
        "size",
        "stride",
        "numel",
        "dim",
        "is_contiguous",
        "storage_offset",
        "sym_size",
        "sym_stride",
        "sym_numel",
        "sym_storage_offset",
        "is_same_size",
        "_has_compatible_shallow_copy_type",
    }
)

# Ops that return their input unchanged when there is nothing to convert (`x.to(x.device)`).
MAYBE_IDENTITY: frozenset[str] = frozenset({"to", "type_as", "_to_copy_if_needed"})


# Functional ops whose CUDA implementation copies their input into the output first, then runs
# the in-place kernel on it (ATen: `masked_fill` = clone + masked_fill_, `scatter` = clone + scatter_).
CLONE_FIRST: frozenset[str] = frozenset({"masked_fill", "scatter", "index_fill", "index_add", "index_put"})
# Segments up to this size sort in one in-place kernel after an index fill and a copy of the values.
SMALL_SORT = 4096


def hidden_kernels(name: str, args: Any, out: Any) -> list[str]:
    """The kernels CUDA launches for op `name` besides the op's own one, each named."""
    if name == "addmm" and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 2:
        return ["copy_ (addmm's input into its output)"]  # cuBLAS adds into its output: C = self first
    if name in CLONE_FIRST:
        return [f"clone ({name}'s input)"]
    if name == "sort" and args and isinstance(args[0], torch.Tensor):
        dim = args[1] if len(args) > 1 and isinstance(args[1], int) else -1
        if args[0].shape[dim] <= SMALL_SORT:
            return ["fill_ (sort's indices)", "copy_ (sort's values)"]
        return ["sort (radix passes)"]
    return []


def _returns_input(args: Any, out: Any) -> bool:
    return bool(args) and isinstance(out, torch.Tensor) and out is args[0]


def op_name(func: Any) -> str:
    """`aten.addmm.default` -> "addmm"."""
    packet = getattr(func, "overloadpacket", func)
    name = getattr(packet, "__name__", str(packet))
    return name.split(".")[-1]


@dataclass
class OpCounts:
    """Working ops seen, by name, split into those inside a decoder layer and the rest."""

    per_layer: list[Counter[str]] = field(default_factory=list)
    outside: Counter[str] = field(default_factory=Counter)
    free: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.outside.values()) + sum(sum(c.values()) for c in self.per_layer)

    def by_name(self) -> dict[str, int]:
        merged: Counter[str] = Counter(self.outside)
        for layer in self.per_layer:
            merged.update(layer)
        return dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0])))


class OpCounter(TorchDispatchMode):
    """Counts working ATen ops; `layer` (set by hooks) says which decoder layer is running."""

    def __init__(self, layers: int = 0) -> None:
        super().__init__()
        self.counts = OpCounts(per_layer=[Counter() for _ in range(layers)])
        self.layer: int | None = None
        self.in_kernel = False

    def _add(self, name: str) -> None:
        if self.layer is not None:
            self.counts.per_layer[self.layer][name] += 1
        else:
            self.counts.outside[name] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = op_name(func)
        out = func(*args, **(kwargs or {}))
        if self.in_kernel:
            pass  # the interpreter's own tensor bookkeeping around a Triton launch: no kernel
        elif name in FREE_OPS or (name in MAYBE_IDENTITY and _returns_input(args, out)):
            self.counts.free[name] += 1
        else:
            self._add(name)
            for hidden in hidden_kernels(name, args, out):
                self._add(hidden)
        return out

    @contextmanager
    def triton_launch(self, name: str) -> Iterator[None]:
        """One Triton kernel (`daemon.engine.decoding.testseam.launch_observers`): counted as one op."""
        self._add(f"triton:{name}")
        self.in_kernel = True
        try:
            yield
        finally:
            self.in_kernel = False


@contextmanager
def counting(layers: Sequence[torch.nn.Module] = ()) -> Iterator[OpCounter]:
    """Count ops in the block, attributing those inside `layers[i].forward` to layer i."""
    from daemon.engine.decoding.testseam import launch_observers as observers

    counter = OpCounter(len(layers))
    handles = []
    for index, layer in enumerate(layers):

        def enter(_module: Any, _args: Any, index: int = index) -> None:
            counter.layer = index

        def leave(_module: Any, _args: Any, _out: Any) -> None:
            counter.layer = None

        handles.append(layer.register_forward_pre_hook(enter))
        handles.append(layer.register_forward_hook(leave))
    observers.append(counter.triton_launch)
    try:
        with counter:
            yield counter
    finally:
        observers.remove(counter.triton_launch)
        for handle in handles:
            handle.remove()


def step_layers(bucket: Any) -> Sequence[torch.nn.Module]:
    """The modules one step runs per decoder layer: our fused layers when the loop has them."""
    decoder = getattr(bucket, "decoder", None)
    if decoder is not None and hasattr(decoder, "layers"):
        return list(decoder.layers)
    return list(bucket.parts.core.layers)


def count_decode_step(
    model: Any,
    processor: Any,
    *,
    batch: int = 1,
    cfg_coef: float = 3.0,
    greedy: bool = False,
    warm_frames: int = 4,
    kernels: str = "aten",
) -> dict[str, Any]:
    """`{ops_per_step, ops_per_layer, layers, outside_layers, by_name, free_ops}` for one decode step.

    A static (uncaptured) bucket decodes `warm_frames` frames first, so the step counted sees the
    state a real step sees (text in the cross-attention slots, a filled prefix); then one step,
    the graph's body, is run under the counter.
    """
    from daemon.engine.decoding.api import DecodeRequest, RowSampling
    from daemon.engine.decoding.dgx import DgxBackend
    from daemon.engine.decoding.graphs import GraphBucket
    from daemon.engine.decoding.parts import model_parts
    from daemon.engine.decoding.step import fused_decoder
    from daemon.engine.decoding.testseam import GRAPH_SHAPED, run_steps

    device = next(model.parameters()).device
    enc = processor(text=["warm lo-fi hip hop beat"] * batch, padding=True, return_tensors="pt")
    rows = [RowSampling(greedy=greedy, seed=i) for i in range(batch)]
    req = DecodeRequest(
        input_ids=enc["input_ids"].to(device),
        attention_mask=enc["attention_mask"].to(device),
        rows=rows,
        cfg_coef=cfg_coef,
        max_frames=warm_frames,
    )
    backend = run_steps(DgxBackend(kernels=kernels), GRAPH_SHAPED)
    # no_grad, not inference_mode: under inference_mode composite ops (linear, layer_norm,
    # scaled_dot_product_attention) reach the counter whole, hiding the kernels they run (a bool
    # mask converted inside the attention, a bias add); here they arrive decomposed.
    with torch.no_grad():
        parts = model_parts(model)
        key = backend.bucket_key(model, req)
        if parts.core.embed_positions.weights.shape[0] < key.length + 1:
            parts.core.embed_positions.make_weights(key.length + 1, parts.core.embed_positions.embedding_dim)
        kind = backend.kernels_for(model)
        fused_decoder(parts).use_kernels(kind)
        bucket = GraphBucket(parts, key, capture=False)
        bucket.decode(req)
        layers = step_layers(bucket)
        # The step reads and advances a device-side position (older buckets kept it on their cache).
        (bucket.position if hasattr(bucket, "position") else bucket.cache.position_tensor).fill_(warm_frames)
        with counting(layers) as counter, plain_matmuls(bucket.decoder):
            bucket._step()
        device_kernels = _device_kernels(bucket, warm_frames) if device.type == "cuda" else None
    counts = counter.counts
    per_layer = [sum(c.values()) for c in counts.per_layer]
    return {
        "kernels": kind,
        "ops_per_step": counts.total,
        "ops_per_layer": max(per_layer) if per_layer else 0,
        "layers": len(layers),
        "outside_layers": sum(counts.outside.values()),
        "by_name": counts.by_name(),
        "layer_by_name": dict(sorted(counts.per_layer[0].items())) if counts.per_layer else {},
        "free_ops": sum(counts.free.values()),
        # On CUDA: what the proxy stands for, the kernels the same step launches (torch.profiler).
        **({"cuda_kernels_per_step": device_kernels} if device_kernels is not None else {}),
    }


@contextmanager
def plain_matmuls(decoder: Any) -> Iterator[None]:
    """The fused step on the matmuls CUDA runs (cuBLAS on the weight as it is) while in the block:
    oneDNN's packed weights set aside, so that what is counted is the GPU's step on any machine."""
    linears = [
        linear
        for layer in getattr(decoder, "layers", ())
        for linear in (layer.qkv, layer.o, layer.cq, layer.co, layer.fc1, layer.fc2)
    ]
    head = getattr(decoder, "head_linear", None)
    linears += [head] if head is not None else []
    packed = [linear.packed for linear in linears]
    for linear in linears:
        linear.packed = None
    try:
        yield
    finally:
        for linear, pack in zip(linears, packed):
            linear.packed = pack


def _device_kernels(bucket: Any, position: int) -> int:
    """CUDA kernels (memory copies and fills included: each is a graph node) one step launches."""
    from torch.profiler import ProfilerActivity, profile

    bucket.position.fill_(position)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        bucket._step()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if "CUDA" in str(getattr(e, "device_type", "")))
