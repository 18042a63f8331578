"""The fused step's Triton kernels compile for real GPUs, here, without one.

The interpreter (test_kernels.py) runs the kernels' logic; it does not compile them. Triton can
compile ahead of time for a named target with the `ptxas` it ships, no GPU or driver needed, so
every variant the step launches is compiled for Hopper (sm_90: H100/H200) and Ampere (sm_80) at the
block shapes `kernels._blocks` picks for decode, and its machine code is checked for register
spills (local memory), which would make a bandwidth-bound kernel slow.
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
from daemon.engine.decoding import kernels

fn = kernels._norm_linear
names = fn.arg_names
cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
out = []
for arch in (90, 80):
    # (dtype, to_cache, pos_on_device, gelu, m, n, k): q/k/v with the cache write (device and host
    # position), the cross-attention query, fc1 with GELU; float32 models; a 64-row prefill block.
    for dtype, to_cache, on_device, gelu, m, n, k in [
        ("bf16", True, True, False, 16, 3072, 1024),
        ("bf16", True, False, False, 64, 3072, 1024),
        ("bf16", False, True, False, 16, 1024, 1024),
        ("bf16", False, True, True, 16, 4096, 1024),
        ("fp32", True, True, False, 16, 3072, 1024),
        ("fp32", False, True, True, 16, 4096, 1024),
    ]:
        block_m, block_n, block_k, warps = kernels._blocks(m, n, k, False)
        ptr = "*" + dtype
        sig = {name: "i32" for name in names}
        sig.update(X=ptr, W=ptr, OUT=ptr, GAMMA=ptr, BETA=ptr, KV=ptr, POS="*i64", eps="fp32")
        const = dict(GELU=gelu, TO_CACHE=to_cache, POS_ON_DEVICE=on_device, F32_DOT=dtype == "fp32",
                     BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
        sig.update({key: "constexpr" for key in const})
        src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in const.items()})
        case = dict(arch=arch, dtype=dtype, to_cache=to_cache, on_device=on_device, gelu=gelu,
                    blocks=[block_m, block_n, block_k])
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        except Exception as exc:
            case["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            out.append(case)
            continue
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
        if case["arch"] == 90 and case["dtype"] == "bf16" and case["blocks"][0] == 16:
            # the decode variants leave room for 4 programs of 4 warps on an SM (65,536 registers)
            assert case["registers"] <= 128, case
    print(json.dumps(cases))
