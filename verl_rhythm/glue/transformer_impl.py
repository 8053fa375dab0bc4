# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/workers/engine/fsdp/transformer_impl.py:FSDPEngineWithLMHead.forward_step`` (verl 0.9.1).

:func:`install` wraps ``FSDPEngineWithLMHead.forward_step`` on the class (never copied). A micro-batch without
:data:`~verl_rhythm.glue.tq_fields.CAPTURE_KEY` goes straight to the stock method; only the actor's old-log-prob pass
of a rhythm run carries it (the trainer glue puts it there for that one call). With it, the stock forward runs inside
:func:`verl_rhythm.measure.hook.capture_active`, so the selected layers hand their post-RoPE q/k to a
:class:`~verl_rhythm.measure.capture.RhythmCapture` during that very forward (no second pass, no second model), and
the per-token WAAD and FAI of the response tokens join ``model_output`` as nested response-layout tensors (sliced
here, so that only response positions leave the worker). verl's
``postprocess_batch_func`` concatenates every ``model_output`` key over micro-batches and undoes the dynamic
batching order; the worker returns every tensor key to the trainer.

Because the class method itself is wrapped, every engine of the FSDP family gets the capture, whatever
``EngineRegistry`` picks for the hardware: the stock engine on any vendor's device, ``FSDPTurboEngineWithLMHead``
(``actor.strategy=fsdp_turbo``, which inherits ``forward_step``) and the CPU platform's registration. verl's
registry is not touched. An engine that overrides ``forward_step`` without calling the stock one returns no
statistics, and the trainer stops the run with :class:`~verl_rhythm.glue.trainer_base.RhythmCaptureMissing`.

The transformers attention hook (:func:`~verl_rhythm.measure.hook.install_attention_hook`) and, under Ulysses
sequence parallelism, the wrapper of verl's inner FlashAttention call (:mod:`verl_rhythm.glue.monkey_patch`) are
installed by the first capturing micro-batch of a process, so a process that never captures keeps transformers'
and verl's functions as they are.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import build_attention_mask_from_nested

from verl_rhythm.glue import monkey_patch as ulysses
from verl_rhythm.glue import qwen2_vl, seams
from verl_rhythm.glue.checks import text_layer_types, text_num_layers
from verl_rhythm.glue.padding import nested_from_rows, response_own_positions
from verl_rhythm.glue.tq_fields import CAPTURE_KEY, FAI, SEQ_STATS, WAAD
from verl_rhythm.measure import hook
from verl_rhythm.measure.capture import RhythmCapture
from verl_rhythm.measure.heads import SequenceRhythm
from verl_rhythm.measure.layout import SequenceLayout, layouts_from_attention_mask, layouts_from_position_ids
from verl_rhythm.measure.settings import CaptureSettings

logger = logging.getLogger(__name__)


READS = ("micro_batch", "forward_only")
"""The parameters of ``forward_step`` the wrapper reads (every argument is passed through)."""
KNOWN = ("micro_batch", "loss_function", "forward_only")
"""verl 0.9.1's parameters of ``forward_step`` (:func:`verl_rhythm.glue.seams.mismatch`)."""


def install(module) -> None:
    """Wrap ``module.FSDPEngineWithLMHead.forward_step`` with :func:`forward_step`; idempotent. A ``forward_step`` that
    moved stays verl's own and is recorded as disabled (:mod:`verl_rhythm.glue.seams`)."""
    seams.wrap_method(module, "FSDPEngineWithLMHead", "forward_step", _forward_step, reads=READS, known=KNOWN)


def is_installed(module) -> bool:
    """Whether ``module.FSDPEngineWithLMHead.forward_step`` is the capturing wrapper."""
    return seams.is_wrapped_method(module, "FSDPEngineWithLMHead", "forward_step")


def _forward_step(call: seams.Call):
    return forward_step(call.stock, call["self"], call["micro_batch"], forward_only=call["forward_only"])


@functools.lru_cache(maxsize=16)
def capture_settings(spec: str) -> CaptureSettings:
    """The :class:`CaptureSettings` of a :data:`CAPTURE_KEY` value, parsed once per distinct value."""
    return CaptureSettings.from_json(spec)


def forward_step(stock, engine, micro_batch, forward_only):
    """The stock forward step; with :data:`CAPTURE_KEY` on the micro-batch, also the rhythm outputs.

    Extra ``model_output`` keys (only when capturing), sliced to the response here in the worker so that only the
    response positions travel: :data:`WAAD` and :data:`FAI`, nested ``(bsz, response_len_i)`` fp32 with each
    response token at its own position (not verl's one-position shift of ``response_from_nested``, which suits
    log-probs); :data:`SEQ_STATS`, nested ``(bsz, 3)`` fp32 (see :data:`verl_rhythm.glue.tq_fields.SEQ_STATS_COLUMNS`).

    Args:
        stock: calls the stock ``forward_step`` with the arguments verl passed (every one, unknown ones included).
        engine: the engine instance (any ``FSDPEngineWithLMHead``).
        micro_batch, forward_only: as verl passes them.
    """
    spec = tu.get_non_tensor_data(data=micro_batch, key=CAPTURE_KEY, default=None)
    if spec is None:
        return stock()
    if not forward_only or torch.is_grad_enabled():
        raise RuntimeError(
            f"'{CAPTURE_KEY}' reached a forward step with gradients (forward_only={forward_only}): the rhythm "
            "capture runs only in the actor's no-grad old-log-prob pass"
        )
    t0 = time.perf_counter()
    hf_config = engine.model_config.hf_config
    # Ulysses: each rank records whole rows of its heads below verl's all-to-all (glue/monkey_patch.py); the
    # capture combines the ranks' heads at finalize
    group = engine.ulysses_parallel_group if engine.use_ulysses_sp else None
    capture = RhythmCapture(
        capture_settings(spec), text_num_layers(hf_config), layer_types=text_layer_types(hf_config), group=group
    )
    use_remove_padding = tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
    response_mask = micro_batch_response_mask(micro_batch)
    # host metadata, moved to the parameters' device now: nothing inside the forward waits on a copy
    capture.set_layouts(
        micro_batch_layouts(micro_batch, use_remove_padding=use_remove_padding, response_mask=response_mask)
    )
    capture.to(engine_device())
    if not hook.is_installed():
        hook.install_attention_hook()
    if engine.use_ulysses_sp:
        ulysses.install()  # idempotent
    qwen2_vl.install(str(getattr(hf_config, "model_type", "")))  # idempotent; verl's own Qwen2-VL attention
    own = time.perf_counter() - t0
    with hook.capture_active(capture):
        loss, output = stock()
    rhythms = capture.finalize()  # capture.seconds: time in record() during the forward, plus this
    seq_lens = micro_batch["input_ids"].offsets().diff().tolist()
    response_lens = response_mask.offsets().diff().tolist()
    output["model_output"].update(
        rhythm_model_outputs(
            rhythms,
            seq_lens,
            response_lens,
            seconds=capture.seconds + own,
            data_parallel_size=engine.get_data_parallel_size(),
        )
    )
    return loss, output


def micro_batch_response_mask(micro_batch) -> torch.Tensor:
    """The micro-batch's ``response_mask`` as nested ``(bsz, response_len_i)``.

    v1 batches carry it nested. The legacy trainer's (``RayPPOTrainer._compute_old_log_prob`` →
    ``left_right_2_no_padding``) keep it right-padded ``(bsz, R)`` next to ``prompts (bsz, P)`` and
    ``attention_mask (bsz, P + R)``; row i's response is then its ``attention_mask`` tokens after the ``P`` prompt
    columns (the rule of verl's ``no_padding_2_padding``, ``verl/workers/utils/padding.py``).

    Raises:
        ValueError: a padded ``response_mask`` without padded ``prompts`` and ``attention_mask`` beside it.
    """
    mask = micro_batch["response_mask"]
    if mask.is_nested:
        return mask
    keys = micro_batch.keys()
    if "prompts" not in keys or "attention_mask" not in keys or micro_batch["attention_mask"].is_nested:
        raise ValueError(
            "the rhythm capture got a padded response_mask without the padded prompts and attention_mask that "
            "locate each response (verl's left_right_2_no_padding batches carry both)"
        )
    prompt_width = micro_batch["prompts"].shape[1]
    lengths = micro_batch["attention_mask"][:, prompt_width:].sum(-1).tolist()
    return torch.nested.as_nested_tensor([row[:n] for row, n in zip(mask, lengths, strict=True)], layout=torch.jagged)


def micro_batch_layouts(micro_batch, *, use_remove_padding: bool, response_mask=None) -> list[SequenceLayout]:
    """Where each sequence of a verl micro-batch lies in the model's attention inputs, and its response positions.

    verl's ``FSDPEngineWithLMHead.prepare_model_inputs`` feeds the model either one packed row
    (``use_remove_padding=True``: ``input_ids.values()`` back to back, ``position_ids`` restarting at 0 per sequence,
    possibly followed by a pad segment) or a right-padded ``(bsz, max_len)`` batch with
    ``build_attention_mask_from_nested``'s mask. Sequence i's response is its last ``len(response_mask[i])``
    positions; R is where that response mask is set.

    Args:
        micro_batch: TensorDict with nested ``input_ids``, ``position_ids`` ``(bsz, L_i)`` (vision-language models:
            ``(bsz, 4, L_i)``, :func:`text_position_ids`) and ``response_mask`` ``(bsz, r_i)``.
        use_remove_padding: which of the two inputs the engine builds.
        response_mask: nested ``(bsz, r_i)`` to use instead of ``micro_batch["response_mask"]``
            (:func:`micro_batch_response_mask`).

    Returns:
        one :class:`SequenceLayout` per sequence, in batch order.

    Raises:
        ValueError: a missing or non-nested tensor, position ids of another shape than
            :func:`text_position_ids` reads, or a layout that disagrees with ``input_ids.offsets()``.
    """
    response_mask = micro_batch["response_mask"] if response_mask is None else response_mask
    for name, value in (("input_ids", micro_batch.get("input_ids", None)), ("response_mask", response_mask)):
        if value is None or not value.is_nested:
            raise ValueError(f"the rhythm capture needs the nested '{name}' of verl's v1 (TransferQueue) batches")
    input_ids = micro_batch["input_ids"]
    seq_lens = input_ids.offsets().diff().cpu()
    masks = sequence_response_masks(input_ids, response_mask)
    if use_remove_padding:
        layouts = layouts_from_position_ids(text_position_ids(micro_batch["position_ids"]).unsqueeze(0), masks)
        starts = input_ids.offsets()[:-1].cpu().tolist()
        if [lay.start for lay in layouts] != starts:
            raise ValueError(
                "position_ids do not restart at 0 at every sequence start of the packed row "
                f"(segments start at {[lay.start for lay in layouts]}, input_ids.offsets() at {starts})"
            )
        return layouts
    attention_mask = build_attention_mask_from_nested(input_ids, max_seq_len=int(seq_lens.max()))
    return layouts_from_attention_mask(attention_mask.cpu(), masks)


def text_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """The packed row's text positions, host ``(total,)``, from the micro-batch's nested position ids.

    Text models: nested ``(bsz, L_i)``. Vision-language models (Qwen2.5-VL, Qwen3-VL): nested ``(bsz, 4, L_i)``,
    row 0 the text positions ``0..L_i-1`` and rows 1-3 the mRoPE (t, h, w) positions (verl's agent loop,
    ``verl/experimental/agent_loop/agent_loop.py``, concatenates them so). verl's engine packs them into ``(4, 1,
    total)`` (``FSDPEngineWithLMHead.prepare_model_inputs``), and what decides the sequences the decoder attends over
    is row 0: transformers' Qwen2.5-VL / Qwen3-VL text models hand ``position_ids[0]`` to their decoder layers (and to
    the mask builder), and verl's Qwen2-VL attention forward (``verl/models/transformers/qwen2_vl.py:
    qwen2_vl_attn_forward``) takes ``position_ids[0]`` and cuts the FlashAttention varlen segments where it is 0.

    Raises:
        ValueError: position ids that are neither.
    """
    values = position_ids.values().detach().cpu()
    if position_ids.dim() == 2:
        return values
    if position_ids.dim() == 3 and values.dim() == 2 and values.shape[0] == 4:
        return values[0]
    raise ValueError(
        f"position_ids of shape {tuple(position_ids.shape)} (values {tuple(values.shape)}): the rhythm capture reads "
        "nested (bsz, L_i) text position ids or verl's (bsz, 4, L_i) multimodal ones (text row first)"
    )


def sequence_response_masks(input_ids: torch.Tensor, response_mask: torch.Tensor) -> list[torch.Tensor]:
    """Each sequence's response positions over the whole sequence: its last ``r_i`` positions are its response.

    Args:
        input_ids: nested ``(bsz, L_i)``.
        response_mask: nested ``(bsz, r_i)``.

    Returns:
        one ``(L_i,)`` bool host tensor per sequence.

    Raises:
        ValueError: a response longer than its sequence.
    """
    seq_lens = input_ids.offsets().diff().cpu()
    resp_lens = response_mask.offsets().diff().cpu()
    masks = []
    responses = response_mask.values().detach().cpu().bool().split(resp_lens.tolist())  # one copy to the host
    for i, (n, r) in enumerate(zip(seq_lens.tolist(), resp_lens.tolist(), strict=True)):
        if r > n:
            raise ValueError(f"sequence {i}: response_mask has {r} positions but input_ids only {n}")
        masks.append(torch.cat([torch.zeros(n - r, dtype=torch.bool), responses[i]]))
    return masks


def engine_device() -> torch.device:
    """The device verl's engine computes on, where the forward's q/k will live.

    verl's own answer (``verl/utils/device.py:get_device_name`` and ``get_device_id``, the ones its engine moves
    every micro-batch to), not the parameters' device: under FSDP2's ``offload_policy`` (``CPUOffloadPolicy``) the
    parameters rest on the CPU between forwards while the forward computes on the accelerator.
    """
    from verl.utils.device import get_device_id, get_device_name

    name = get_device_name()
    return torch.device(name) if name in ("cpu", "meta") else torch.device(name, get_device_id())


def rhythm_model_outputs(
    rhythms: list[SequenceRhythm],
    seq_lens: list[int],
    response_lens: list[int],
    seconds: float,
    *,
    data_parallel_size: int = 1,
) -> dict:
    """The engine's extra ``model_output`` entries for one micro-batch, sliced to the responses.

    Args:
        rhythms: one :class:`SequenceRhythm` per sequence, in batch order (``RhythmCapture.finalize()``), each
            ``(L_i,)`` over the whole sequence.
        seq_lens: L_i, the full length of each sequence.
        response_lens: r_i, the response length of each sequence (its last r_i positions).
        seconds: capture time of the micro-batch on this rank, split over the sequences by length.
        data_parallel_size: the data-parallel size (``engine.get_data_parallel_size()``). verl returns the outputs
            of one rank per data-parallel group only (sequence-parallel rank 0: ``is_mp_src_rank_with_outputs``
            in ``verl/workers/engine/fsdp/transformer_impl.py``, read by ``collect_lazy_compute_data_proto`` in
            ``verl/single_controller/base/decorator.py``), so each share is divided by it and a batch's shares
            add up to the mean capture time of a rank.

    Returns:
        ``{WAAD: (bsz, r_i), FAI: (bsz, r_i)}`` (each response token at its own position) and
        ``{SEQ_STATS: (bsz, 3)}``, nested jagged fp32.

    Raises:
        ValueError: the lists disagree in length, a statistic does not cover its sequence, a response is longer
            than its sequence, or ``data_parallel_size`` < 1.
    """
    if not len(rhythms) == len(seq_lens) == len(response_lens):
        raise ValueError(
            f"{len(rhythms)} captured sequences for a micro-batch of {len(seq_lens)} sequences and "
            f"{len(response_lens)} responses"
        )
    if data_parallel_size < 1:
        raise ValueError(f"data_parallel_size={data_parallel_size}: must be >= 1")
    for i, (r, n) in enumerate(zip(rhythms, seq_lens, strict=True)):
        if r.waad.shape != (n,) or r.fai.shape != (n,):
            raise ValueError(f"sequence {i}: captured {tuple(r.waad.shape)} statistics for {n} positions")
    total = max(sum(seq_lens), 1)
    stats = []
    for r, n in zip(rhythms, seq_lens, strict=True):
        span = r.span.float()
        share = span.new_tensor(seconds * n / total / data_parallel_size)
        stats.append(torch.stack([span[r.local_heads].mean(), span[r.global_heads].mean(), share]))
    return {
        WAAD: response_own_positions([r.waad.float() for r in rhythms], response_lens),
        FAI: response_own_positions([r.fai.float() for r in rhythms], response_lens),
        SEQ_STATS: nested_from_rows(stats),
    }
