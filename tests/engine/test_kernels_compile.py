"""The fused step's Triton kernels compile for real GPUs, here, without one.

The interpreter (test_kernels.py) runs the kernels' logic; it does not compile them. Triton can
compile ahead of time for a named target with the `ptxas` it ships, no GPU or driver needed, so
every variant the step launches is compiled for Hopper (sm_90: H100/H200) and Ampere (sm_80) as a
real launch compiles it (the block shapes `kernels._blocks` picks, and the alignment and
divisibility hints Triton derives from the launch's own arguments), and its machine code is
checked for register spills (local memory), which would make a bandwidth-bound kernel slow, and
for loads outside the software pipeline (each one a full memory round trip per loop step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daemon.engine.decoding.launches import kernels_problem

pytestmark = pytest.mark.skipif(
    kernels_problem(torch.device("cpu")) is not None, reason="Triton is not installed or does not import"
)

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh process: this one's Triton interprets (the conftest), compiling needs it not to.
SCRIPT = r"""
import json, subprocess, sys
from pathlib import Path
import torch
torch.cuda.is_available = lambda: True  # compile only: nothing touches a GPU
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.jit import create_function_from_signature
from daemon.engine.decoding import kernels

fn = kernels._norm_linear
cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
# The launches the step makes, through the module's own entry points on meta tensors (shapes,
# dtypes, strides and 16-byte-aligned pointers as on a GPU, no memory): `_launch` is caught, so
# what is compiled is what a real launch compiles, alignment and divisibility hints included.
launches = []
kernels._launch = lambda name, grid, *args, **meta: launches.append((args, meta))
meta = torch.device("meta")
E, H, D = 1024, 16, 64
# (dtype, to_cache, pos_on_device, gelu, rows, tokens, n): q/k/v with the cache write (device and
# host position), the cross-attention query, fc1 with GELU; float32 models; a 64-row prefill block.
cases = [
    ("bf16", True, True, False, 16, 1, 3 * E),
    ("bf16", True, False, False, 2, 32, 3 * E),
    ("bf16", False, True, False, 16, 1, E),
    ("bf16", False, True, True, 16, 1, 4 * E),
    ("fp32", True, True, False, 16, 1, 3 * E),
    ("fp32", False, True, True, 16, 1, 4 * E),
]
out = []
for arch in (90, 80):
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    for dtype, to_cache, on_device, gelu, rows, tokens, n in cases:
        dt = torch.bfloat16 if dtype == "bf16" else torch.float32
        x = torch.empty(rows * tokens, E, dtype=dt, device=meta)
        norm = torch.nn.LayerNorm(E, device=meta, dtype=dt)
        weight = torch.empty(n, E, dtype=dt, device=meta)
        launches.clear()
        if to_cache:
            kv = torch.empty(2, rows, H, 256, D, dtype=dt, device=meta)
            position = torch.empty(1, dtype=torch.long, device=meta) if on_device else 0
            kernels.norm_qkv(x, norm, weight, kv, position, tokens)
        else:
            kernels.norm_linear(x, norm, weight, gelu=gelu)
        (args, launch), = launches
        bound, spec, options = binder(*args, **launch)
        options, signature, constexprs, attrs = fn._pack_args(backend, launch, bound, spec, options)
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        blocks = [launch["BLOCK_M"], launch["BLOCK_N"], launch["BLOCK_K"]]
        case = dict(arch=arch, dtype=dtype, to_cache=to_cache, on_device=on_device, gelu=gelu, blocks=blocks,
                    aligned=sum(1 for hints in attrs.values() if ["tt.divisibility", 16] in hints))
        try:
            compiled = triton.compile(src, target=target, options={"num_warps": launch["num_warps"]})
        except Exception as exc:
            case["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            out.append(case)
            continue
        ptx = compiled.asm["ptx"]
        case.update(async_copies=ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
                    plain_loads=sum(1 for line in ptx.splitlines() if line.strip().startswith("ld.global")))
        cubin = Path(sys.argv[1]) / f"k{len(out)}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
        fields = dict(f.split(":", 1) for f in usage.split() if ":" in f and f.split(":", 1)[1].isdigit())
        case.update(registers=int(fields["REG"]), local_bytes=int(fields["LOCAL"]))
        out.append(case)
print(json.dumps(out))
"""


def test_every_kernel_variant_compiles_for_hopper_and_ampere_without_spills(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # a real compile, not a cached one
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(cases) == 12
    failed = [c for c in cases if "error" in c]
    assert not failed, failed
    for case in cases:
        assert case["local_bytes"] == 0, case  # no spills to local memory
        assert 0 < case["registers"] <= 255, case
        assert case["aligned"] >= 10, case  # the pointers and the 16-divisible sizes and strides
        # Every load of x (both statistics loops and the product's), the weight and the norm is an
        # asynchronous copy into the software pipeline; at most the device-side position is not.
        assert case["async_copies"] > 0 and case["plain_loads"] <= 1, case
        if case["arch"] == 90 and case["dtype"] == "bf16" and case["blocks"][0] == 16:
            # the decode variants leave room for 4 programs of 4 warps on an SM (65,536 registers)
            assert case["registers"] <= 128, case
    print(json.dumps(cases))
