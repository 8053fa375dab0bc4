# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Memory of the batched capture at real shapes, without memory: one selected layer recorded on ``meta`` tensors.

A ``TorchDispatchMode`` (:class:`verl_rhythm.testing.ops.AllocationCounter`) lists every tensor the capture allocates
while it records one layer of a packed micro-batch (verl's remove-padding row) with the kernel choices of a CUDA GPU
(bf16 grid with the fp32-output gemm, tiled bands). Shapes default to Qwen3-8B's attention (32 query heads, 8 kv
heads, head dim 128, bf16 q/k). For each micro-batch it prints the largest allocation, the number of allocations of
at least half that size, the allocations' total, and the ratio of the largest allocation to the micro-batch's q
(tokens × heads × head dim × 2 bytes). Meta tensors have no data: a host read would raise, so the run also shows
the path sync-free. Also printed: the aten ops the capture runs to record the layer (``--band-loop``: with the band
schedule of a CPU, a loop over 64-row blocks, instead of the CUDA tiles).

Usage::

    python benchmarks/capture_memory.py                                  # 2x8192, 1x8192+30x540, 1x16384+27x600
    python benchmarks/capture_memory.py --batches 16x256 1x2048+32x64 --heads 9 --kv-heads 3 --head-dim 64
    python benchmarks/capture_memory.py --batches 2x8192 --heads 9 --kv-heads 3 --head-dim 64 --band-loop
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_rhythm.config import RhythmConfig  # noqa: E402
from verl_rhythm.measure.capture import RhythmCapture, SequenceLayout  # noqa: E402
from verl_rhythm.measure.kernels import kernels_for  # noqa: E402
from verl_rhythm.testing.ops import AllocationCounter  # noqa: E402

GIB = 2**30
CUDA_CHOICES = dataclasses.replace(
    kernels_for("meta"), low_precision_grid=True, fp32_output_gemm=True, lse_attention=False, tiled_bands=True
)
"""What :func:`~verl_rhythm.measure.kernels.kernels_for` chooses on a CUDA GPU for bf16 q/k, on ``meta`` tensors."""


def parse_batch(spec: str) -> list[int]:
    """``"1x8192+30x540"`` -> one length per sequence."""
    lengths = []
    for part in spec.split("+"):
        count, length = (int(x) for x in part.lower().split("x"))
        lengths += [length] * count
    return lengths


def record_one_layer(lengths: list[int], heads: int, kv_heads: int, head_dim: int, cfg: RhythmConfig, kernels=None):
    """Record one layer of a packed row of ``lengths`` on meta tensors; the allocation counter and the capture."""
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()[:-1]]
    layouts = [SequenceLayout(0, a, n, torch.arange(n) >= n // 4) for a, n in zip(starts, lengths, strict=True)]
    capture = RhythmCapture(cfg, 1, layouts, fused=False, kernels=kernels or CUDA_CHOICES)
    capture.to("meta")
    total = sum(lengths)
    q = torch.empty(1, heads, total, head_dim, device="meta", dtype=torch.bfloat16)
    k = torch.empty(1, kv_heads, total, head_dim, device="meta", dtype=torch.bfloat16)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None].to("meta")
    with AllocationCounter() as counter:
        capture.record(0, q, k, head_dim**-0.5, attention_mask=None, position_ids=position_ids)
    return counter, capture


def row(spec: str, args) -> dict:
    lengths = parse_batch(spec)
    cfg = RhythmConfig(layers=(0,), chunk_size=args.chunk_size)
    kernels = dataclasses.replace(CUDA_CHOICES, tiled_bands=False) if args.band_loop else CUDA_CHOICES
    counter, _ = record_one_layer(lengths, args.heads, args.kv_heads, args.head_dim, cfg, kernels)
    q_bytes = sum(lengths) * args.heads * args.head_dim * 2
    big = [s for s in counter.sizes if s >= counter.largest / 2]
    return {
        "micro_batch": spec,
        "tokens": sum(lengths),
        "largest_GiB": counter.largest / GIB,
        "allocations_over_half_largest": len(big),
        "total_allocated_GiB": sum(counter.sizes) / GIB,
        "largest_over_q": counter.largest / q_bytes,
        "syncs": counter.syncs,
        "aten_ops": counter.ops,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (``tests/test_docs_commands_on_cpu.py`` parses the documented commands)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", nargs="+", default=["2x8192", "1x8192+30x540", "1x16384+27x600"])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--band-loop", action="store_true", help="bands as a loop over 64-row blocks (CPU schedule)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    rows = []
    bands = "bands: a loop over 64-row blocks" if args.band_loop else "bands: tiles"
    print(f"{args.heads} / {args.kv_heads} heads, head dim {args.head_dim}, bf16 q/k, chunk {args.chunk_size}, {bands}")
    print("| micro-batch | tokens | largest allocation | allocations >= half of it | all allocations | largest / q "
          "| aten ops |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for spec in args.batches:
        r = row(spec, args)
        rows.append(r)
        print(f"| {spec} | {r['tokens']:,} | {r['largest_GiB'] * 1024:.0f} MiB | {r['allocations_over_half_largest']} "
              f"| {r['total_allocated_GiB']:.2f} GiB | {r['largest_over_q']:.2f} "
              f"| {r['aten_ops']:,} |", flush=True)  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
