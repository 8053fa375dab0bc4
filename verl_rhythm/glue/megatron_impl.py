# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seams: ``verl/workers/engine/megatron/transformer_impl.py:MegatronEngineWithLMHead.forward_step`` and that
module's ``get_forward_backward_func`` global (verl 0.9.1).

The Megatron counterpart of :mod:`verl_rhythm.glue.transformer_impl`: the capture itself is the same
(:class:`~verl_rhythm.measure.capture.RhythmCapture`, :func:`~verl_rhythm.glue.transformer_impl.rhythm_model_outputs`);
only the seam and the layout differ.

- Seam. :func:`install` wraps ``MegatronEngineWithLMHead.forward_step`` on the class. verl's Megatron schedule calls
  it with an iterator of micro-batches and takes one; the wrapper takes it, and a micro-batch without
  :data:`~verl_rhythm.glue.tq_fields.CAPTURE_KEY` goes to the stock method unchanged (an iterator that yields that
  micro-batch first, then the rest). With it, the stock forward runs inside
  :func:`verl_rhythm.measure.hook.capture_active`, and a forward pre-hook (with keyword arguments) on each decoder
  layer's ``self_attention.core_attention`` (megatron-core ``transformer/attention.py:Attention.forward`` calls it with
  the post-RoPE ``query``, ``key``, ``value``, ``attention_mask`` and ``packed_seq_params=``) hands the selected
  layers' q/k to the capture. The layer's global index is ``layer.layer_number - 1`` (megatron-core numbers layers
  from 1, pipeline offset included). The stock method returns ``(output, postprocess)``; the statistics, finalized
  right after the forward, join the ``model_output`` that ``postprocess`` (``postprocess_micro_batch_func``) returns,
  and verl's ``postprocess_batch_func`` concatenates them over micro-batches like the log-probs.
- Layout. verl packs a micro-batch as THD rows (``verl/models/mcore/util.py:preprocess_thd_engine``,
  ``use_remove_padding=True``): ``query (T, H, D)``, ``key (T, H_kv, D)``, sequence i starting at row
  ``PackedSeqParams.cu_seqlens_q_padded[i]`` (each sequence padded to the TP x CP alignment) and holding its
  ``input_ids.offsets().diff()[i]`` real tokens. The layouts are built from the first selected layer's
  ``PackedSeqParams`` (:func:`thd_layouts`), so they are where the kernel's rows are; every selected layer's call is
  checked against them after the forward (the kernel's sequence starts, ``cu_seqlens_q_padded[:-1]``).
- Tensor parallelism. Rank r of the tensor-parallel group holds the query heads [r · H/tp, (r + 1) · H/tp) (and
  their KV heads) of every layer, the same split as verl's Ulysses, so the capture is given that group
  (``parallel_state.get_tensor_model_parallel_group()``) as its head group: ``finalize`` gathers the head spans, splits
  all H heads into local/global groups as at TP = 1, and all-reduces the WAAD/FAI group sums, so every TP rank
  returns the same statistics.
- Pipeline parallelism. Each stage records the selected layers it holds; the capture's layer group is the pipeline
  group (``get_pipeline_model_parallel_group()``), whose ``finalize`` all-reduces the spans (zeros where a stage lacks
  the layer: exact) and the group sums. A collective inside the schedule would deadlock (a stage would wait on one
  that waits for its activations), so under PP the forward step only records; the schedule that
  ``get_forward_backward_func`` returns is wrapped, and after it every stage finalizes the micro-batches in order
  (:func:`finish_deferred`) and the last stage adds the outputs to the ``model_output`` dicts megatron-core kept,
  before ``forward_backward_batch`` hands them to ``postprocess_batch_func`` (as verl's router replay gathers over
  the stages with ``pp_gather`` after the schedule).

Supported: TP and PP (not virtual PP), CP = 1, packed rows, megatron-core's local core attention (the CPU backend's
:class:`~verl_rhythm.backends.cpu.megatron.CPUCoreAttention`); the start-up checks
(:mod:`verl_rhythm.glue.checks`) refuse everything else by key. The hooks are registered by a model's first
capturing micro-batch, so a process that never captures keeps megatron-core's modules as they are.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import logging
import time

import torch
from verl.utils import tensordict_utils as tu

from verl_rhythm.glue import seams
from verl_rhythm.glue.checks import text_layer_types, text_num_layers
from verl_rhythm.glue.tq_fields import CAPTURE_KEY
from verl_rhythm.glue.transformer_impl import (
    capture_settings,
    micro_batch_response_mask,
    rhythm_model_outputs,
    sequence_response_masks,
)
from verl_rhythm.measure import hook
from verl_rhythm.measure.capture import RhythmCapture
from verl_rhythm.measure.layout import SequenceLayout
from verl_rhythm.wrapping import is_wrapped

logger = logging.getLogger(__name__)

READS = ("batch_iter", "model")
"""The parameters of ``forward_step`` the wrapper reads (``batch_iter`` is handed on as an equivalent iterator)."""
KNOWN = ("batch_iter", "model", "logits_processor_func", "postprocess_micro_batch_func")
"""verl 0.9.1's parameters of ``forward_step`` (:func:`verl_rhythm.glue.seams.mismatch`)."""
HOOKED = "_verl_rhythm_core_attention_hooks"
"""Attribute of a megatron-core GPT model holding the hook handles of its layers (registered once)."""


SCHEDULE = "get_forward_backward_func"
"""The module global of verl's engine module that ``MegatronEngine.forward_backward_batch`` calls for megatron-core's
schedule (``from megatron.core.pipeline_parallel import get_forward_backward_func``)."""


def install(module) -> None:
    """Wrap ``module.MegatronEngineWithLMHead.forward_step`` and the module's :data:`SCHEDULE` (the schedule it
    returns completes the pipeline-deferred statistics, :func:`finish_deferred`); idempotent. A ``forward_step`` that
    moved stays verl's own and is recorded as disabled (:mod:`verl_rhythm.glue.seams`); without the schedule global,
    a capture under pipeline parallelism raises."""
    seams.wrap_method(module, "MegatronEngineWithLMHead", "forward_step", _forward_step, reads=READS, known=KNOWN)
    stock = getattr(module, SCHEDULE, None)
    if callable(stock) and not is_wrapped(stock):
        setattr(module, SCHEDULE, seams.wrap(stock, _get_forward_backward_func))


def is_installed(module) -> bool:
    """Whether ``module.MegatronEngineWithLMHead.forward_step`` is the capturing wrapper."""
    return seams.is_wrapped_method(module, "MegatronEngineWithLMHead", "forward_step")


def _get_forward_backward_func(call: seams.Call):
    schedule = call.stock()

    @functools.wraps(schedule)
    def deferring(*args, **kwargs):
        deferred: list[_Deferred] = []
        token = _DEFERRED.set(deferred)
        try:
            result = schedule(*args, **kwargs)
        finally:
            _DEFERRED.reset(token)
        finish_deferred(deferred)
        return result

    return deferring


def _forward_step(call: seams.Call):
    batches = call["batch_iter"]
    micro_batch = next(batches)

    def stock():
        return call.stock_with(batch_iter=itertools.chain([micro_batch], batches))

    if tu.get_non_tensor_data(data=micro_batch, key=CAPTURE_KEY, default=None) is None:
        return stock()
    return forward_step(stock, call["self"], micro_batch, call["model"])


class _Pending:
    """What the first selected layer of a forward needs to build the layouts: each sequence's response mask."""

    def __init__(self, masks: list[torch.Tensor]):
        self.masks = masks


def forward_step(stock, engine, micro_batch, model):
    """The stock forward step; with :data:`CAPTURE_KEY` on the micro-batch, also the rhythm outputs.

    Adds to the ``model_output`` of the returned ``postprocess``: :data:`~verl_rhythm.glue.tq_fields.WAAD` and
    :data:`~verl_rhythm.glue.tq_fields.FAI` nested ``(bsz, response_len_i)`` fp32, each response token at its own
    position, and :data:`~verl_rhythm.glue.tq_fields.SEQ_STATS` nested ``(bsz, 3)``, as the FSDP glue does.

    Args:
        stock: calls the stock ``forward_step`` with this micro-batch (and verl's other arguments).
        engine: the ``MegatronEngineWithLMHead``.
        micro_batch: the TensorDict the schedule handed over (nested ``input_ids``, ``response_mask``).
        model: the model chunk verl passes (DDP- or Float16-wrapped megatron-core GPT model).

    Raises:
        RuntimeError: a capture request with gradients enabled (only the no-grad old-log-prob pass captures).
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"'{CAPTURE_KEY}' reached a Megatron forward step with gradients enabled: the rhythm capture runs only "
            "in the actor's no-grad old-log-prob pass"
        )
    from verl.utils.megatron_utils import unwrap_model

    t0 = time.perf_counter()
    gpt = unwrap_model(model)
    install_hooks(gpt)
    hf_config = engine.model_config.hf_config
    head_group, layer_group = parallel_groups()
    capture = RhythmCapture(
        capture_settings(spec_of(micro_batch)),
        text_num_layers(hf_config),
        layer_types=text_layer_types(hf_config),
        group=head_group,
        layer_group=layer_group,
    )
    response_mask = micro_batch_response_mask(micro_batch)
    pending = _Pending(sequence_response_masks(micro_batch["input_ids"], response_mask))
    own = time.perf_counter() - t0
    token = _PENDING.set(pending)
    try:
        with hook.capture_active(capture):
            output, postprocess = stock()
    finally:
        _PENDING.reset(token)
    entry = _Deferred(
        capture,
        micro_batch["input_ids"].offsets().diff().tolist(),
        response_mask.offsets().diff().tolist(),
        own,
        engine.get_data_parallel_size(),
    )
    if layer_group is None:
        return output, _with_outputs(postprocess, entry.outputs())
    # pipeline stages: the statistics are combined over the stages after the schedule (a collective here would wait
    # on a stage that waits for this one's activations)
    deferred = _DEFERRED.get()
    if deferred is None:
        raise RuntimeError(
            f"rhythm capture on Megatron with pipeline parallelism: verl's {SCHEDULE} in "
            "verl/workers/engine/megatron/transformer_impl.py is not the glue's (it moved or was replaced), so the "
            "stages' statistics cannot be combined after the schedule; set "
            "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=1"
        )
    deferred.append(entry)
    return output, _with_outputs(postprocess, entry)


def parallel_groups():
    """``(head group, layer group)``: megatron-core's tensor-parallel group (each rank holds a share of every layer's
    heads) and pipeline-parallel group (each stage a share of the layers), each ``None`` at size 1
    (``megatron/core/parallel_state.py``)."""
    from megatron.core import parallel_state as mpu

    tp = mpu.get_tensor_model_parallel_group() if mpu.get_tensor_model_parallel_world_size() > 1 else None
    pp = mpu.get_pipeline_model_parallel_group() if mpu.get_pipeline_model_parallel_world_size() > 1 else None
    return tp, pp


class _Deferred:
    """One capturing micro-batch's capture and what its outputs need; under pipeline parallelism also the
    ``model_output`` dict that the last stage's post-processing returned (``None`` on the other stages), completed by
    :func:`finish_deferred`."""

    def __init__(self, capture: RhythmCapture, lengths: list[int], response_lengths: list[int], own: float, dp: int):
        self.capture, self.lengths, self.response_lengths = capture, lengths, response_lengths
        self.own, self.data_parallel_size = own, dp
        self.model_output: dict | None = None

    def outputs(self) -> dict:
        """Finalize the capture (collectives over its groups): the rhythm outputs of the micro-batch."""
        rhythms = self.capture.finalize()
        return rhythm_model_outputs(
            rhythms,
            self.lengths,
            self.response_lengths,
            seconds=self.capture.seconds + self.own,
            data_parallel_size=self.data_parallel_size,
        )


def finish_deferred(deferred: list[_Deferred]) -> None:
    """After megatron-core's schedule: finalize each pipeline-deferred micro-batch in schedule order (every stage of
    the pipeline group holds the same micro-batches in the same order and joins each finalize's collectives) and add
    its outputs to the ``model_output`` the last stage's post-processing returned, before verl's
    ``postprocess_batch_func`` concatenates them."""
    for entry in deferred:
        extra = entry.outputs()
        if entry.model_output is not None:
            entry.model_output.update(extra)


_DEFERRED: contextvars.ContextVar[list[_Deferred] | None] = contextvars.ContextVar(
    "verl_rhythm_megatron_deferred", default=None
)


def spec_of(micro_batch) -> str:
    """The micro-batch's :data:`CAPTURE_KEY` value."""
    return tu.get_non_tensor_data(data=micro_batch, key=CAPTURE_KEY, default=None)


def _with_outputs(postprocess, extra: dict | _Deferred):
    """``postprocess`` (verl's ``postprocess_micro_batch_func`` partial) whose returned ``model_output`` (the last
    element of its tuple) also holds ``extra``; given a :class:`_Deferred`, the ``model_output`` is kept there for
    :func:`finish_deferred` (megatron-core's schedule keeps that same dict until verl concatenates it)."""

    @functools.wraps(postprocess)
    def wrapped(*args, **kwargs):
        result = postprocess(*args, **kwargs)
        if isinstance(extra, _Deferred):
            extra.model_output = result[-1]["model_output"]
        else:
            result[-1]["model_output"].update(extra)
        return result

    return wrapped


_PENDING: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar("verl_rhythm_megatron", default=None)


def install_hooks(gpt) -> None:
    """Register :func:`_core_attention_pre_hook` on every decoder layer's ``self_attention.core_attention`` of a
    megatron-core GPT model (``gpt.decoder.layers``); once per model."""
    if getattr(gpt, HOOKED, None) is not None:
        return
    handles = []
    for layer in gpt.decoder.layers:
        index = layer.layer_number - 1  # megatron-core numbers layers from 1, pipeline offset included
        handles.append(
            layer.self_attention.core_attention.register_forward_pre_hook(
                functools.partial(_core_attention_pre_hook, index), with_kwargs=True
            )
        )
    setattr(gpt, HOOKED, handles)


def _argument(args: tuple, kwargs: dict, position: int, name: str):
    return args[position] if len(args) > position else kwargs.get(name)


def _core_attention_pre_hook(layer_idx: int, module, args: tuple, kwargs: dict) -> None:
    """Hand a selected layer's post-RoPE q/k to the active capture (nothing outside a capturing forward).

    Args:
        layer_idx: the layer's global index.
        module: the core attention module (its ``softmax_scale`` is the logit scale).
        args, kwargs: the call's arguments: ``query (T, H, D)``, ``key (T, H_kv, D)`` of packed THD rows,
            ``packed_seq_params=``.

    Raises:
        RuntimeError: a call without ``packed_seq_params`` (the capture reads packed THD rows only).
    """
    capture = hook.active_capture()
    if capture is None or (capture.layouts is not None and not capture.wants(layer_idx)):
        return
    query, key = _argument(args, kwargs, 0, "query"), _argument(args, kwargs, 1, "key")
    params = _argument(args, kwargs, 6, "packed_seq_params")
    if params is None or getattr(params, "qkv_format", None) != "thd":
        raise RuntimeError(
            f"rhythm capture, Megatron layer {layer_idx}: the core attention got no THD PackedSeqParams; the capture "
            "reads packed rows only (actor_rollout_ref.model.use_remove_padding=true)"
        )
    starts = row_starts(params)
    if capture.layouts is None:  # from the first layer (a pipeline stage may hold no selected layer)
        pending = _PENDING.get()
        capture.set_layouts(thd_layouts(params, pending.masks), device=query.device)
    if not capture.wants(layer_idx):
        return
    capture.record(
        layer_idx,
        query.transpose(0, 1).unsqueeze(0),
        key.transpose(0, 1).unsqueeze(0),
        getattr(module, "softmax_scale", None),
        attention_mask=None,
        cu_seq_lens_q=starts,
    )


def row_starts(params) -> torch.Tensor:
    """``(bsz + 1,)``: the first row of each packed sequence (``cu_seqlens_q_padded``, else ``cu_seqlens_q``)."""
    return params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q


def thd_layouts(params, masks: list[torch.Tensor]) -> list[SequenceLayout]:
    """Where each sequence lies in the packed THD rows of a Megatron forward.

    Args:
        params: the forward's ``PackedSeqParams`` (``qkv_format="thd"``): sequence i starts at row
            ``cu_seqlens_q_padded[i]`` (``cu_seqlens_q[i]`` when there is no padded variant).
        masks: one ``(L_i,)`` bool per sequence, its response positions, L_i its real length (verl's nested
            ``input_ids``).

    Returns:
        one :class:`SequenceLayout` per sequence (row 0 of the ``(1, H, T, D)`` view of the rows).

    Raises:
        ValueError: a different number of sequences, or a sequence longer than its padded slot.
    """
    bounds = row_starts(params).tolist()
    if len(bounds) != len(masks) + 1:
        raise ValueError(
            f"PackedSeqParams hold {len(bounds) - 1} packed sequences but the micro-batch has {len(masks)}"
        )
    layouts = []
    for i, mask in enumerate(masks):
        slot = bounds[i + 1] - bounds[i]
        if mask.numel() > slot:
            raise ValueError(f"sequence {i}: {mask.numel()} tokens but a packed slot of {slot} rows")
        layouts.append(SequenceLayout(row=0, start=bounds[i], length=mask.numel(), response_mask=mask))
    return layouts
