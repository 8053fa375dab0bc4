# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The attention hook: idempotent install on transformers' real registry, pass-through outside a capture.

Real transformers models (tiny random Llama GQA) and the real ``ALL_ATTENTION_FUNCTIONS``; nothing is mocked.
"""

from __future__ import annotations

import threading

import pytest
import torch
from models import tiny_model
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure.capture import (
    RhythmCapture,
    SequenceLayout,
    layouts_from_attention_mask,
    layouts_from_position_ids,
)
from verl_rhythm.measure.hook import active_capture, capture_active, install_attention_hook, is_installed
from verl_rhythm.testing.chunked import ChunkedCapture

CFG = RhythmConfig(layers=(1, 4))


class CountingCapture(RhythmCapture):
    """Records which layers reached :meth:`record`, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def record(self, layer_idx, query, key, scaling, **kwargs):
        if self.wants(layer_idx):
            self.calls.append(layer_idx)
        super().record(layer_idx, query, key, scaling, **kwargs)


def _batch(n=24, padded=True):
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (2, n))
    mask = torch.ones(2, n, dtype=torch.long)
    if not padded:
        return ids, None, layouts_from_attention_mask(mask, [torch.arange(n) >= 8, torch.arange(n) >= 3])
    mask[1, :5] = 0
    layouts = layouts_from_attention_mask(mask, [torch.arange(n) >= 8, torch.arange(n - 5) >= 8])
    return ids, mask, layouts


def test_install_is_idempotent_and_registers_no_new_name():
    names = set(ALL_ATTENTION_FUNCTIONS.keys())
    install_attention_hook()
    first = {name: ALL_ATTENTION_FUNCTIONS[name] for name in names}
    getter = AttentionInterface.get_interface
    install_attention_hook()
    assert is_installed()
    assert set(ALL_ATTENTION_FUNCTIONS.keys()) == names
    assert {name: ALL_ATTENTION_FUNCTIONS[name] for name in names} == first
    assert AttentionInterface.get_interface is getter
    chain, fn = [], ALL_ATTENTION_FUNCTIONS["sdpa"]
    while fn is not None:  # other patches (e.g. verl's) may sit in the chain; ours appears exactly once
        chain.append(fn)
        fn = getattr(fn, "__wrapped__", None)
    assert sum(bool(getattr(f, "__verl_rhythm_wrapped__", False)) for f in chain) == 1
    assert chain[-1].__name__ == "sdpa_attention_forward"


def test_each_implementation_records_selected_layers_only_inside_the_block(cpu_flash_attn):
    install_attention_hook()
    ids, mask, layouts = _batch()
    for impl in ("eager", "sdpa", "flash_attention_2"):
        model = tiny_model("llama_gqa", attn_implementation=impl)
        capture = RhythmCapture(CFG, model.config.num_hidden_layers, layouts)
        with torch.no_grad():
            before = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            assert capture.paths == {}  # no active capture: the wrappers only pass through
            with capture_active(capture):
                assert active_capture() is capture
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            assert active_capture() is None
            after = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        assert sorted(capture.paths) == [1, 4]
        # a padded batch, so the layer's call gets a mask: eager and FlashAttention-2 (a 2-D padding mask) layers take
        # the batched path, fp32 SDPA on CPU the fused one (stock SDPA converts transformers' bool mask itself)
        assert set(capture.paths.values()) == {"fused" if impl == "sdpa" else "batched"}
        assert torch.equal(before, after)
        assert len(capture.finalize()) == 2


@pytest.mark.parametrize("path", ["chunked", "batched"])
def test_capture_paths_leave_the_forward_bit_identical(path):
    install_attention_hook()
    ids, mask, layouts = _batch()
    model = tiny_model("qwen3", attn_implementation="sdpa")
    kind = ChunkedCapture if path == "chunked" else RhythmCapture
    capture = kind(CFG, model.config.num_hidden_layers, layouts, fused=False)
    with torch.no_grad():
        stock = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        with capture_active(capture):
            hooked = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert set(capture.paths.values()) == {path}
    assert torch.equal(stock, hooked)


def test_entry_replaced_after_install_is_still_captured():
    """verl's prefix-grouper patch re-sets ALL_ATTENTION_FUNCTIONS entries after our install: still captured."""
    install_attention_hook()
    ids, mask, layouts = _batch(padded=False)  # no mask: the fused path applies
    model = tiny_model("llama_gqa", attn_implementation="sdpa")
    stock = ALL_ATTENTION_FUNCTIONS["sdpa"]
    calls = []

    def outer(module, *args, **kwargs):  # like verl/models/transformers/monkey_patch.py:_create_prefix_grouper_wrapper
        calls.append(module.layer_idx)
        return stock(module, *args, **kwargs)

    ALL_ATTENTION_FUNCTIONS["sdpa"] = outer
    try:
        capture = CountingCapture(CFG, model.config.num_hidden_layers, layouts)
        with torch.no_grad(), capture_active(capture):
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = stock
    assert calls == list(range(6))
    # get_interface wraps `outer` too; the inner wrapper (around the stock kernel) captures, the outer one does not
    assert capture.calls == [1, 4] and capture.paths == {1: "fused", 4: "fused"}


def test_capture_is_per_context_not_per_process():
    install_attention_hook()
    ids, mask, layouts = _batch()
    model = tiny_model("llama_gqa", attn_implementation="sdpa")
    capture = RhythmCapture(CFG, model.config.num_hidden_layers, layouts)
    seen = []

    def other_thread():
        seen.append(active_capture())
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    with capture_active(capture):
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert seen == [None] and capture.paths == {}


@pytest.fixture(params=["eager", "sdpa", "flash_attention_2"])
def impl(request):
    """Each attention implementation; FlashAttention-2 on the CPU flash-attn."""
    if request.param == "flash_attention_2":
        request.getfixturevalue("cpu_flash_attn")
    return request.param


def test_mismatched_layouts_are_an_error_not_wrong_statistics(impl):
    """A packed row whose layouts cut one sequence in two: the model's mask (FlashAttention-2: the sequences it reads
    off the position ids) disagrees; finalize says so."""
    install_attention_hook()
    model = tiny_model("llama_gqa", attn_implementation=impl)
    pos = torch.cat([torch.arange(20), torch.arange(10)])[None]
    ids = torch.randint(0, 128, pos.shape)
    wrong = [SequenceLayout(0, 0, 12, torch.ones(12, dtype=torch.bool)), SequenceLayout(0, 12, 18, torch.ones(18) > 0)]
    capture = RhythmCapture(CFG, model.config.num_hidden_layers, wrong)
    with torch.no_grad(), capture_active(capture):
        model(input_ids=ids, position_ids=pos, use_cache=False)
    with pytest.raises(RuntimeError, match=r"layers \[1, 4\].*layouts do not match the model inputs"):
        capture.finalize()
    right = layouts_from_position_ids(pos, [torch.ones(20, dtype=torch.bool), torch.ones(10, dtype=torch.bool)])
    capture.set_layouts(right)
    with torch.no_grad(), capture_active(capture):
        model(input_ids=ids, position_ids=pos, use_cache=False)
    assert len(capture.finalize()) == 2


def test_flash_attention_2_position_ids_that_do_not_restart_at_zero_are_an_error(cpu_flash_attn):
    """A packed row whose second sequence's position ids start at 3: FlashAttention-2 (which splits where
    position_ids == 0) attends over it as one sequence, the layouts read from the same ids say two. Under SDPA and
    eager transformers' mask splits it like the layouts; under FA2 finalize must refuse, not return statistics of an
    attention the model never computed."""
    install_attention_hook()
    pos = torch.cat([torch.arange(20), torch.arange(3, 13)])[None]
    ids = torch.randint(0, 128, pos.shape, generator=torch.Generator().manual_seed(3))
    layouts = layouts_from_position_ids(pos, [torch.ones(20, dtype=torch.bool), torch.ones(10, dtype=torch.bool)])
    assert [lay.length for lay in layouts] == [20, 10]
    for impl in ("sdpa", "eager", "flash_attention_2"):
        model = tiny_model("llama_gqa", attn_implementation=impl)
        capture = RhythmCapture(CFG, model.config.num_hidden_layers, layouts)
        with torch.no_grad(), capture_active(capture):
            model(input_ids=ids, position_ids=pos, use_cache=False)
        if impl == "flash_attention_2":
            with pytest.raises(RuntimeError, match="layouts do not match the model inputs"):
                capture.finalize()
        else:
            assert len(capture.finalize()) == 2
