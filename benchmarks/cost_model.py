# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Cost model of the capture per selected layer on a GPU: bytes moved and FLOPs, batched path vs the fused kernels.

An estimate, not a measurement (no GPU here): roofline times on an H100 SXM (989 TFLOP/s dense bf16, 3.35 TB/s HBM)
for Qwen3-8B's attention (32 query / 8 kv heads, head dim 128, 36 layers, 6.95e9 non-embedding parameters) and the
capture's 5 selected layers, at the micro-batches of the issue: 16 x 1K, 2 x 8K and 1 x 16K + 27 x 600.

- causal logits per layer: H · Σ_i N_i (N_i + 1) / 2.
- batched path, full rows: explicit fp32 logits in query chunks: the matmul writes each logit, then scale, max,
  subtract-and-exp, sum and the weighted sum read or rewrite it: about 48 bytes of memory traffic per causal logit;
  FLOPs 2 · D per logit (QKᵀ). Bands: (64 + 128) keys per row and head at the same 48 bytes. Plus the padded q/k grid,
  written and read, twice the tokens at most (the grids): 2 · 2 · T_pad · (H + H_kv) · D · 2 bytes.
- fused kernels: QKᵀ on tensor cores with the online softmax in registers: 2 · D FLOPs per causal logit; memory: q read
  once, each 64-row tile re-reads the keys it attends to (D · 2 bytes per key and head, per tile: D · 2 / 64 bytes per
  logit, an upper bound that ignores L2 reuse among the 4 query heads of a kv head); the FAI column pass adds the
  band's logits, (64 + H_hi - H_lo + 64) per column and head. Outputs: 4 fp32 per token and head.
- the forward: 2 · parameters · T + 4 · D per causal logit over all 36 layers, at the same roofline (ideal MFU; a
  real forward at 40-50 % MFU takes about twice as long, which halves every share).

Usage: ``python benchmarks/cost_model.py`` (prints a markdown table).
"""

from __future__ import annotations

import argparse

PEAK_FLOPS = 989e12
PEAK_BYTES = 3.35e12
H, HKV, D, LAYERS, PARAMS, SELECTED = 32, 8, 128, 36, 6.95e9, 5
TILE, BAND_KEYS, HI_MINUS_LO = 64, 64 + 128, 90
BATCHES = {"16 × 1K": [1024] * 16, "2 × 8K": [8192] * 2, "1 × 16K + 27 × 600": [16384] + [600] * 27}


def per_layer(lengths: list[int]) -> dict[str, float]:
    tokens = sum(lengths)
    logits = H * sum(n * (n + 1) / 2 for n in lengths)
    padded = 2 * tokens  # the grids pad to at most twice their tokens
    batched_bytes = 48 * logits + 48 * H * tokens * BAND_KEYS + 2 * 2 * padded * (H + HKV) * D * 2
    batched_flops = 2 * D * (logits + H * tokens * BAND_KEYS)
    band = H * tokens * (TILE + HI_MINUS_LO + TILE)
    kernel_bytes = (logits + band) * D * 2 / TILE + 2 * tokens * (H + HKV) * D * 2 + 4 * 4 * H * tokens
    kernel_flops = 2 * D * (logits + band)
    forward_flops = 2 * PARAMS * tokens + LAYERS * 4 * D * logits
    return {
        "tokens": tokens,
        "logits": logits,
        "batched_GB": batched_bytes / 1e9,
        "batched_TFLOP": batched_flops / 1e12,
        "kernel_GB": kernel_bytes / 1e9,
        "kernel_TFLOP": kernel_flops / 1e12,
        "batched_ms": 1e3 * max(batched_bytes / PEAK_BYTES, batched_flops / PEAK_FLOPS),
        "kernel_ms": 1e3 * max(kernel_bytes / PEAK_BYTES, kernel_flops / PEAK_FLOPS),
        "kernel_floor_ms": 1e3 * kernel_flops / PEAK_FLOPS,  # every key tile from L2: the tensor-core floor
        "forward_ms": 1e3 * forward_flops / PEAK_FLOPS,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script: no argument (``tests/test_docs_commands_on_cpu.py`` parses the docs)."""
    return argparse.ArgumentParser(description=__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> None:
    build_parser().parse_args(argv)
    print("| micro-batch | causal logits / layer | batched: GB, TFLOP, ms | kernels: GB, TFLOP, ms | forward (ms) "
          "| 5 layers, batched | 5 layers, kernels (FLOP floor – no L2 reuse) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, lengths in BATCHES.items():
        r = per_layer(lengths)
        print(
            f"| {name} | {r['logits']:.2e} | {r['batched_GB']:.1f}, {r['batched_TFLOP']:.2f}, {r['batched_ms']:.1f} "
            f"| {r['kernel_GB']:.2f}, {r['kernel_TFLOP']:.2f}, {r['kernel_ms']:.2f} | {r['forward_ms']:.0f} "
            f"| {100 * SELECTED * r['batched_ms'] / r['forward_ms']:.1f} % "
            f"| {100 * SELECTED * r['kernel_floor_ms'] / r['forward_ms']:.1f} – "
            f"{100 * SELECTED * r['kernel_ms'] / r['forward_ms']:.1f} % |"
        )


if __name__ == "__main__":
    main()
