"""The op counter behind `bench --ops`, and the kernel budget of the fused decoder step."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from daemon.engine.decoding.launches import kernels_problem
from daemon.engine.decoding.parts import delay_pattern, model_parts
from daemon.engine.decoding.step import float_mask, fused_decoder
from daemon.ops.opcount import FREE_OPS, count_decode_step, counting
from tests.engine.conftest import load_pretrained


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    return load_pretrained(tiny_model_dir)


def test_counter_leaves_out_views_and_counts_work() -> None:
    x = torch.randn(4, 6)
    with counting() as counter, torch.no_grad():
        y = x.view(6, 4).t().unsqueeze(0)  # views only
        z = torch.nn.functional.dropout(x, p=0.5, training=False)  # identity in eval mode
        w = (y + 1).mul(2)  # two kernels
        c = y.reshape(24)  # a reshape that must copy (y is transposed) is work
    assert z is x or torch.equal(z, x)
    assert counter.counts.by_name() == {"add": 1, "clone": 1, "mul": 1}
    assert {"view", "t"} <= set(counter.counts.free) <= FREE_OPS
    assert w.shape == (1, 4, 6) and c.shape == (24,)


def test_decode_step_counts_are_positive_and_consistent(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    report = count_decode_step(model, processor)
    assert report["layers"] == model.config.decoder.num_hidden_layers
    assert report["ops_per_layer"] > 0 and report["outside_layers"] > 0
    assert report["ops_per_step"] >= report["layers"] * report["ops_per_layer"]
    assert report["ops_per_step"] == sum(report["by_name"].values())
    # The fused step's budget: 3 norms, 6 matmuls (3 carrying the residual add), 1 cache write,
    # 2 attentions, 1 GELU.
    assert report["ops_per_layer"] <= 13, report["layer_by_name"]
    assert "add" not in report["layer_by_name"], report["layer_by_name"]
    assert report["layer_by_name"].get("sort", 0) == 0
    assert report["by_name"]["sort"] == 1  # one sort serves top-k and top-p
    assert report["kernels"] == "aten"


@pytest.fixture(scope="module")
def small_shape(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """musicgen-small's decoder (width 1024, 16 heads, MLP 4096, 4 codebooks of 2048) with two
    layers: what a step launches per layer and outside the layers is what the full model launches."""
    from daemon.ops.tinymodel import init_decoder_shape

    return load_pretrained(init_decoder_shape(tmp_path_factory.mktemp("small") / "small", "small"))


def _hidden_copies(names: dict[str, int]) -> dict[str, int]:
    return {name: n for name, n in names.items() if "(" in name}


@pytest.mark.skipif(kernels_problem(torch.device("cpu")) is not None, reason="Triton is not installed")
def test_the_step_at_the_small_shape_launches_eight_kernels_a_layer_and_under_forty_outside(
    small_shape: tuple[Any, Any],
) -> None:
    """The step a GPU runs by default, counted as CUDA launches it (hidden copies included): each
    layer norm fused into the matmul after it (q/k/v with the cache write, the cross-attention
    query, fc1 with its GELU), 2 attentions, 3 matmuls that add into the residual in place. Outside
    the layers: embeddings, final norm, heads, guidance and sampling, the step's bookkeeping."""
    model, processor = small_shape
    plain = count_decode_step(model, processor, kernels="aten")
    report = count_decode_step(model, processor, kernels="triton")
    assert report["kernels"] == "triton" and report["layers"] == 2
    (attention,) = [name for name, n in plain["layer_by_name"].items() if n == 2]
    assert plain["layer_by_name"] == {
        "native_layer_norm": 3,
        "mm": 3,
        "addmm_": 3,  # in place: an out-of-place addmm on CUDA copies the residual first
        "index_copy_": 1,
        attention: 2,
        "gelu": 1,
    }
    assert report["layer_by_name"] == {
        "triton:norm_qkv_cache": 1,
        "triton:norm_linear": 1,
        "triton:norm_linear_gelu": 1,
        "addmm_": 3,
        attention: 2,
    }
    assert report["ops_per_layer"] == 8
    # A bfloat16 step adds one kernel outside the layers on CUDA: the logits cast to float32 for
    # guidance (here the model is float32, whose CPU attention runs in the model's dtype as on CUDA).
    assert report["outside_layers"] + 1 < 40, report["by_name"]
    assert report["outside_layers"] == plain["outside_layers"]
    # Outside the layers the only hidden kernels are the sort's own (index fill, value copy).
    assert _hidden_copies(report["by_name"]) == {"fill_ (sort's indices)": 1, "copy_ (sort's values)": 1}
    assert report["ops_per_step"] == plain["ops_per_step"] - 5 * report["layers"]


def test_the_count_includes_the_kernels_cuda_runs_inside_an_op() -> None:
    """What the proxy adds for an op CUDA runs as several kernels, and what it does not."""
    a, b = torch.randn(4, 8), torch.randn(8, 8)
    x, bias = torch.randn(4, 8), torch.zeros(8)
    with counting() as counter, torch.no_grad():
        torch.addmm(x, a, b)  # copy of x into the output, then the matmul
        x.addmm_(a, b)  # the matmul alone
        torch.addmm(bias, a, b)  # a 1-D bias: cuBLASLt's epilogue, one kernel
        x.masked_fill(x > 0, 0.0)  # clone + masked_fill_
        x.masked_fill_(x > 0, 0.0)
        x.sort(dim=-1)  # index fill + value copy + the in-place segment sort
    assert counter.counts.by_name() == {
        "addmm": 2,
        "copy_ (addmm's input into its output)": 1,
        "addmm_": 1,
        "gt": 2,
        "masked_fill": 1,
        "clone (masked_fill's input)": 1,
        "masked_fill_": 1,
        "sort": 1,
        "fill_ (sort's indices)": 1,
        "copy_ (sort's values)": 1,
    }


def _transformers_layer_step(
    layer: Any, hidden: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """One decode-token forward of a plain transformers layer (after a prefill), and its op count."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    keyword = "cache" if "cache" in inspect.signature(type(layer).forward).parameters else "past_key_values"
    layer(prefix, None, states, encoder_attention_mask=mask, use_cache=True, **{keyword: cache})
    with counting([layer]) as counter:
        out = layer(hidden, None, states, encoder_attention_mask=mask, use_cache=True, **{keyword: cache})
    return out, sum(counter.counts.per_layer[0].values())


def test_fused_layer_does_the_same_work_in_fewer_ops(tiny: tuple[Any, Any]) -> None:
    model, _ = tiny
    parts = model_parts(model)
    decoder = fused_decoder(parts)
    layer, fused = parts.core.layers[0], decoder.layers[0]
    rows, text, width = 2, 5, parts.core.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(rows, text, width, generator=gen)
    mask = torch.ones(rows, 1, 1, text, dtype=torch.bool)
    mask[1, ..., 3:] = False
    prefix = torch.randn(rows, 3, width, generator=gen)
    hidden = torch.randn(rows, 1, width, generator=gen)
    with torch.no_grad():
        expected, plain_ops = _transformers_layer_step(layer, hidden, states, mask, prefix)
        kv = torch.zeros(len(decoder.layers), 2, rows, parts.heads_count, 8, parts.head_dim)
        cross = torch.empty(len(decoder.layers), 2, rows, parts.heads_count, text, parts.head_dim)
        decoder.cross_kv(states, cross)
        fmask = float_mask(mask, torch.float32)
        fused(prefix.reshape(rows * 3, width), rows, kv[0], 0, None, cross[0], fmask)
        with counting([fused]) as counter:
            got = fused(hidden.reshape(rows, width), rows, kv[0], 3, None, cross[0], fmask)
    fused_ops = sum(counter.counts.per_layer[0].values())
    # addmm's accumulate may round differently from transformers' matmul-then-add: close, not bitwise.
    torch.testing.assert_close(got.view(rows, 1, width), expected, rtol=1e-5, atol=1e-6)
    assert fused_ops <= 13, counter.counts.by_name()
    assert fused_ops < plain_ops, (fused_ops, plain_ops)


def test_delay_pattern_is_built_on_the_cpu_and_copied_once(tiny: tuple[Any, Any]) -> None:
    """No op of the builder touches the decode device: one copy moves the finished pattern."""
    model, _ = tiny
    parts = model_parts(model)
    meta = parts.__class__(**{**parts.__dict__, "device": torch.device("meta")})
    devices: list[tuple[str, set[str]]] = []

    from torch.utils._python_dispatch import TorchDispatchMode

    class Devices(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            flat = torch.utils._pytree.tree_leaves((args, kwargs or {}))
            out = func(*args, **(kwargs or {}))
            leaves = flat + torch.utils._pytree.tree_leaves(out)
            seen = {t.device.type for t in leaves if isinstance(t, torch.Tensor)}
            devices.append((func.overloadpacket.__name__, seen))
            return out

    prompt = torch.randint(0, 16, (2, parts.num_codebooks, 5))
    with Devices():
        prefix, pattern = delay_pattern(meta, 2, prompt, 40)
    assert prefix.device.type == "meta" and pattern.device.type == "meta"
    on_device = [name for name, seen in devices if "meta" in seen]
    # Only the one transfer (and the slicing of what it produced) involves the device.
    assert [n for n in on_device if n not in FREE_OPS] == ["_to_copy"], on_device
    assert len(devices) > 10  # the builder did its work, on the CPU


def test_bench_ops_cli_prints_the_counts(tiny_model_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "bench", "--ops", "--tiny", "--device", "cpu", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ops_per_step"] >= report["layers"] * report["ops_per_layer"] > 0
    assert report["by_name"] and report["device"] == "cpu"
    if kernels_problem(torch.device("cpu")) is None:
        # the default where Triton imports: the step a GPU runs (here in Triton's interpreter)
        assert report["kernels"] == "triton" and report["ops_per_layer"] == 8, report["layer_by_name"]
