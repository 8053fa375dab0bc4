# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Compile the fused statistics kernels for NVIDIA and AMD GPUs on a machine without one, and read their resources.

``triton.compile`` with a ``GPUTarget`` produces the cubin on any machine; the ``cuobjdump`` that ships inside
Triton's wheel (``triton/backends/nvidia/bin``) reads its resource usage (registers, stack, local and static shared
memory) and its SASS (tensor-core instructions: ``HMMA`` on sm_80, ``HGMMA`` (wgmma) on sm_90). For the compile test
and ``benchmarks/triton_resources.py``; needs a process where ``TRITON_INTERPRET`` is not set.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import tempfile

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
"""Most shared memory one block may use (opt-in maximum): A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB."""
LDS_LIMIT = 64 * 1024
"""Local data share (shared memory) of one workgroup on AMD CDNA2/CDNA3 (MI200 ``gfx90a``, MI300 ``gfx942``)."""


def _signature(name: str, dtype: str) -> dict[str, str]:
    from verl_rhythm.measure.triton_stats import KERNELS

    fn = KERNELS[name]
    pointers = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "tiles_ptr": "*i32", "resp_ptr": "*i8"}
    floats = {"scale", "softcap"}
    sig = {}
    for arg, param in inspect.signature(fn).parameters.items():
        if param.annotation is not inspect.Parameter.empty and "constexpr" in str(param.annotation):
            continue
        if arg in pointers:
            sig[arg] = pointers[arg]
        elif arg.endswith("_ptr"):
            sig[arg] = "*fp32"
        else:
            sig[arg] = "fp32" if arg in floats else "i32"
    return sig


def _source(name: str, head_dim: int, dtype: str, group: int):
    """The ``ASTSource`` a launch of kernel ``name`` specializes to: contiguous last dims, plain causal attention."""
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from verl_rhythm.measure import triton_stats as ts

    constexprs = dict(G=group, D=head_dim, BLOCK_D=ts.block_d(head_dim), BLOCK_M=ts.BLOCK_M, BLOCK_N=ts.BLOCK_N,
                      SOFTCAP=False, WINDOW=False, UPCAST=False, IEEE=dtype == "fp32", WHILE_LOOP=False, sq_d=1,
                      sk_d=1)  # fmt: skip
    if name == "rows":
        constexprs.update(W=10, SINKS=False)
    return ASTSource(JITFunction(ts.KERNELS[name]), _signature(name, dtype), constexprs=constexprs)


def compile_kernel_amd(name: str, arch: str, head_dim: int, dtype: str = "bf16", group: int = 4) -> dict:
    """Compile kernel ``name`` for the AMD GPU ``arch`` (``gfx90a``, ``gfx942``) and read its resources.

    Triton's AMD backend compiles offline like the NVIDIA one; its ``amdgcn`` assembly states the kernel's resources.

    Returns:
        ``vgpr_count``, ``vgpr_spill_count``, ``sgpr_count``, ``sgpr_spill_count`` (SGPR spills go to VGPR lanes, not
        memory), ``private_segment_fixed_size`` (scratch memory per lane: spills to memory), ``shared`` (LDS bytes the
        launch requests) and ``MFMA`` (matrix-core instructions in the assembly).
    """
    import triton
    from triton.backends.compiler import GPUTarget

    from verl_rhythm.measure import triton_stats as ts

    if triton.knobs.runtime.interpret:
        raise RuntimeError("compile_kernel_amd needs a process without TRITON_INTERPRET=1")
    compiled = triton.compile(
        _source(name, head_dim, dtype, group), target=GPUTarget("hip", arch, 64), options={"num_warps": ts.NUM_WARPS}
    )
    asm = compiled.asm["amdgcn"]
    keys = "vgpr_count|vgpr_spill_count|sgpr_count|sgpr_spill_count|private_segment_fixed_size"
    out = {key: int(value) for key, value in re.findall(rf"\.({keys}):\s+(\d+)", asm)}
    out.update(shared=int(compiled.metadata.shared), MFMA=asm.count("v_mfma"))
    return out


def compile_kernel(name: str, arch: int, head_dim: int, dtype: str = "bf16", group: int = 4) -> dict:
    """Compile kernel ``name`` (``rows`` or ``columns``) for ``sm_{arch}`` at ``head_dim`` and read its resources.

    The signature is the one a launch specializes on: contiguous last dims (stride 1), plain causal attention.

    Returns:
        ``{"REG", "STACK", "LOCAL", "SHARED"}`` (cuobjdump's ``-res-usage``), ``shared_dynamic`` (bytes the launch
        requests), ``HMMA``/``HGMMA`` (counts in the SASS), ``num_warps`` and the block sizes.
    """
    import triton
    from triton.backends.compiler import GPUTarget

    from verl_rhythm.measure import triton_stats as ts

    if triton.knobs.runtime.interpret:
        raise RuntimeError("compile_kernel needs a process without TRITON_INTERPRET=1")
    source = _source(name, head_dim, dtype, group)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": ts.NUM_WARPS})
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
    out = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
    out.update(shared_dynamic=int(compiled.metadata.shared), HMMA=sass.count("HMMA"), HGMMA=sass.count("HGMMA"))
    out.update(num_warps=ts.NUM_WARPS, BLOCK_M=ts.BLOCK_M, BLOCK_N=ts.BLOCK_N, BLOCK_D=ts.block_d(head_dim))
    return out
