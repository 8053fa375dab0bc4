# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Token-id batches for transformers' ``generate``: shared by the report (:mod:`verl_rhythm.analyze.generate`) and
the CPU backend's rollout (:mod:`verl_rhythm.backends.cpu.sampling`), neither of which imports the other."""

from __future__ import annotations

import torch


def left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists into ``(input_ids, attention_mask)``, both ``(B, max_len)`` long, as ``generate``
    expects for a batch of prompts (the padding is masked out)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention_mask[i, width - len(p) :] = 1
    return input_ids, attention_mask
