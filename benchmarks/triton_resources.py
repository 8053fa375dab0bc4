# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Resources of the fused statistics kernels compiled for sm_80 and sm_90, on any machine (no GPU needed).

Compiles both kernels with ``triton.compile`` for ``GPUTarget("cuda", 80 | 90, 32)`` in bf16 at head dims 128 and 64
and prints, per kernel, registers, stack and local memory (spills), static and dynamic shared memory and the
tensor-core instructions in the SASS (:mod:`verl_rhythm.testing.triton_compile`). Run without ``TRITON_INTERPRET``.
It compiles and never runs them: the bf16 ``tl.dot`` has executed only upcast to fp32, in Triton's interpreter, so
nothing here shows its results on a GPU (``benchmarks/gpu_check.sh`` checks that).

Usage: ``python benchmarks/triton_resources.py``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_rhythm.testing.triton_compile import compile_kernel  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script: no argument (``tests/test_docs_commands_on_cpu.py`` parses the docs)."""
    return argparse.ArgumentParser(description=__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    print("| kernel | arch | head dim | registers | stack / local | shared (static + dynamic) "
          "| tensor-core instructions |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in ("rows", "columns"):
        for arch in (80, 90):
            for head_dim in (128, 64):
                r = compile_kernel(name, arch, head_dim)
                mma = f"{r['HMMA']} HMMA" if arch == 80 else f"{r['HGMMA']} HGMMA"
                print(f"| `_{name}` | sm_{arch} | {head_dim} | {r['REG']} | {r['STACK']} / {r['LOCAL']} "
                      f"| {r['SHARED']} B + {r['shared_dynamic'] // 1024} KiB | {mma} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
