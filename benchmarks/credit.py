# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Time γ for a batch of responses on CPU (target: well under one second for 512 × 1,024).

Usage: python benchmarks/credit.py [--batch 512] [--length 1024] [--repeats 5] [--threads 2]

Prints the median wall time of :func:`verl_rhythm.credit.compute_gamma` per strategy (all statistics passed, so
every strategy also builds the preplan/anchor sets reported as metrics) and its ratio to verl's own
``compute_grpo_outcome_advantage`` on the same batch (groups of 8), measured in the same run. Random per-token
statistics and response lengths uniform in [1, length]; no assertion on time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from verl_rhythm.config import STRATEGIES
from verl_rhythm.credit import compute_gamma


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (``tests/test_docs_commands_on_cpu.py`` parses the documented commands)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    b, t = args.batch, args.length
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None] < lengths[:, None]
    waad = torch.rand(b, t, generator=g) * 10
    fai = torch.rand(b, t, generator=g) * 0.05
    ent = torch.rand(b, t, generator=g)
    rewards = torch.zeros(b, t)
    rewards[torch.arange(b), lengths - 1] = torch.randint(0, 2, (b,), generator=g).float()
    uid = np.array([f"p{i // 8}" for i in range(b)], dtype=object)

    def median_time(fn) -> float:
        runs = []
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            fn(i)
            if i:  # the first call warms up the allocator
                runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    grpo = median_time(lambda i: compute_grpo_outcome_advantage(rewards, mask.float(), uid))
    print(f"compute_gamma on {b} x {t} (torch {torch.__version__}, {args.threads} threads), median of {args.repeats}")
    print(f"verl compute_grpo_outcome_advantage: {grpo:.3f} s")
    print(f"{'strategy':<10} {'seconds':>8} {'vs grpo':>8}")
    for strategy in STRATEGIES:
        sec = median_time(
            lambda i, s=strategy: compute_gamma(
                s, mask, waad=waad, fai=fai, entropy=ent, generator=torch.Generator().manual_seed(i)
            )
        )
        print(f"{strategy:<10} {sec:8.3f} {sec / grpo:8.2f}")


if __name__ == "__main__":
    main()
