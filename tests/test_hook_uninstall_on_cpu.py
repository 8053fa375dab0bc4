# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``uninstall_attention_hook`` puts transformers' attention registry back exactly as it was."""

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from verl_rhythm.measure import hook


def _snapshot():
    return (
        dict(AttentionInterface._global_mapping),
        dict(ALL_ATTENTION_FUNCTIONS._local_mapping),
        AttentionInterface.get_interface,
    )


def test_uninstall_restores_every_entry_and_the_interface_lookup():
    hook.uninstall_attention_hook()  # whatever earlier tests installed
    before = _snapshot()
    hook.install_attention_hook()
    wrapped = _snapshot()
    assert wrapped[0]["sdpa"] is not before[0]["sdpa"] and hook.is_installed()
    assert wrapped[2] is not before[2]
    hook.uninstall_attention_hook()
    after = _snapshot()
    assert after[0] == before[0] and after[1] == before[1]
    assert all(after[0][k] is before[0][k] for k in before[0])
    assert after[2] is before[2] and not hook.is_installed()
    hook.uninstall_attention_hook()  # idempotent
    assert _snapshot()[0] == before[0]


def test_a_model_runs_unchanged_after_uninstall():
    from models import tiny_model

    model = tiny_model("llama_gqa", num_layers=2, attn_implementation="sdpa")
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits
    hook.install_attention_hook()
    hook.uninstall_attention_hook()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    fn = AttentionInterface().get_interface("sdpa", None)
    assert not getattr(fn, "__verl_rhythm_wrapped__", False)
