# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""What the engine's capture hands back: response-layout statistics, and its time (device events on CUDA, the
per-rank mean under Ulysses).

The CUDA branch (:class:`~verl_rhythm.measure.capture.EventTimer`) runs here with a recording stand-in for
``torch.cuda.Event`` (no GPU on a CPU runner); the capture itself is the real one.
"""

import pytest
import torch

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue.statistics import capture_metrics, capture_rows
from verl_rhythm.glue.tq_fields import FAI, SEQ_STATS, WAAD
from verl_rhythm.glue.transformer_impl import micro_batch_response_mask, rhythm_model_outputs
from verl_rhythm.measure.capture import EventTimer, RhythmCapture, SequenceLayout, WallTimer, timer_for


class FakeEvent:
    """Stands in for ``torch.cuda.Event``: each event gets the next tick (10 ms apart) when recorded."""

    log: list = []
    clock = 0

    def __init__(self, enable_timing=False):
        assert enable_timing, "elapsed_time needs enable_timing=True"
        self.at = None
        self.synchronized = False

    def record(self):
        FakeEvent.clock += 10
        self.at = FakeEvent.clock
        FakeEvent.log.append(("record", self))

    def synchronize(self):
        self.synchronized = True
        FakeEvent.log.append(("synchronize", self))

    def elapsed_time(self, end):
        assert self.at is not None and end.at is not None, "both events must be recorded"
        return float(end.at - self.at)


def _qk(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, n, 8, generator=g), torch.randn(1, 2, n, 8, generator=g)


def test_the_cuda_branch_times_each_call_with_events_and_waits_only_when_read():
    FakeEvent.log.clear()
    devices = []

    def make(device_type):
        devices.append(device_type)
        return EventTimer(FakeEvent)

    capture = RhythmCapture(RhythmConfig(layers=(1, 2)), 4, timer=make)
    capture.set_layouts([SequenceLayout(0, 0, 8, torch.ones(8, dtype=torch.bool))])
    q, k = _qk(8)
    capture.record(1, q, k, None)
    capture.record(2, q, k, None)
    assert [kind for kind, _ in FakeEvent.log] == ["record"] * 4, "recording never waits"
    capture.finalize()
    assert [kind for kind, _ in FakeEvent.log] == ["record"] * 6
    assert capture.seconds == pytest.approx(0.03)  # three spans (two layers, finalize) of one 10 ms tick each
    waits = [event for kind, event in FakeEvent.log if kind == "synchronize"]
    assert waits == [FakeEvent.log[5][1]], "only the last event is waited for, when the seconds are read"
    assert devices == ["cpu"]
    capture.reset()
    assert capture.seconds == 0.0


def test_cuda_gets_event_timing_and_other_devices_wall_time():
    assert isinstance(timer_for("cuda"), EventTimer)
    assert isinstance(timer_for("cpu"), WallTimer) and isinstance(timer_for("xpu"), WallTimer)
    assert EventTimer(FakeEvent).seconds() == 0.0


def test_capture_seconds_are_the_mean_over_the_ranks_whose_outputs_return():
    """verl returns the outputs of sequence-parallel rank 0 of each data-parallel group only
    (``is_mp_src_rank_with_outputs``); the engine divides by the data-parallel size, so the batch sums to the mean
    capture time of a rank (4 ranks, Ulysses size 2: two data-parallel ranks that took 0.3 s and 0.5 s)."""

    class Seq:
        def __init__(self, n):
            self.waad, self.fai = torch.zeros(n), torch.zeros(n)
            self.span = torch.tensor([1.0, 2.0, 3.0, 4.0])
            self.local_heads, self.global_heads = torch.tensor([0]), torch.tensor([3])

    per_rank = []
    for seconds, lens in ((0.3, [4, 6]), (0.5, [5, 5])):
        out = rhythm_model_outputs(
            [Seq(n) for n in lens], lens, [n - 1 for n in lens], seconds=seconds, data_parallel_size=2
        )
        per_rank += list(out[SEQ_STATS].unbind())
    stats = torch.nested.as_nested_tensor(per_rank, layout=torch.jagged)
    rows = capture_rows(stats, stage_seconds=2.0)
    metrics = capture_metrics(rows, torch.ones(4, dtype=torch.bool))
    assert metrics["rhythm/capture_s"] == pytest.approx(0.4)
    assert metrics["rhythm/capture_share"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="data_parallel_size"):
        rhythm_model_outputs([Seq(3)], [3], [2], seconds=1.0, data_parallel_size=0)


class Full:
    """A captured sequence whose WAAD at position p is 100 · i + p (FAI its negative)."""

    def __init__(self, i, n):
        self.waad = torch.arange(n, dtype=torch.float32) + 100 * i
        self.fai = -self.waad
        self.span = torch.tensor([1.0, 2.0])
        self.local_heads, self.global_heads = torch.tensor([0]), torch.tensor([1])


def test_the_engine_returns_each_response_token_at_its_own_position():
    """Only the response positions leave the worker, without the one-position shift verl gives log-probs."""
    seq_lens, response_lens = [7, 4, 9], [3, 4, 0]
    out = rhythm_model_outputs([Full(i, n) for i, n in enumerate(seq_lens)], seq_lens, response_lens, seconds=1.0)
    assert out[WAAD].is_nested and out[FAI].is_nested and out[SEQ_STATS].is_nested
    for i, (n, r) in enumerate(zip(seq_lens, response_lens, strict=True)):
        want = torch.arange(n - r, n, dtype=torch.float32) + 100 * i  # positions n - r .. n - 1, the last r tokens
        assert torch.equal(out[WAAD][i], want) and torch.equal(out[FAI][i], -want)
    with pytest.raises(ValueError, match="a response of 5 tokens in a sequence of 4"):
        rhythm_model_outputs([Full(0, 4)], [4], [5], seconds=1.0)


def test_a_padded_legacy_response_mask_becomes_each_rows_response():
    """The legacy trainer's micro-batches keep ``response_mask`` right-padded (``left_right_2_no_padding``); the
    engine reads each row's response as its attention-mask tokens after the prompt columns."""
    from tensordict import TensorDict

    prompt_lens, response_lens, prompt, response = (2, 4, 3), (5, 2, 3), 4, 5
    attention = torch.zeros(3, prompt + response, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens, strict=True)):
        attention[i, prompt - p : prompt + r] = 1
    mask = attention[:, prompt:].clone()
    mask[0, 3] = 0  # a tool token inside the response stays masked
    td = TensorDict({"prompts": torch.zeros(3, prompt), "attention_mask": attention, "response_mask": mask}, [3])
    rows = micro_batch_response_mask(td).unbind()
    assert [len(r) for r in rows] == [5, 2, 3] and rows[0].tolist() == [1, 1, 1, 0, 1]
    nested = torch.nested.as_nested_tensor(list(rows), layout=torch.jagged)
    assert micro_batch_response_mask(TensorDict({"response_mask": nested}, [3])) is nested
    with pytest.raises(ValueError, match="padded response_mask without the padded prompts"):
        micro_batch_response_mask(TensorDict({"response_mask": mask}, [3]))
