# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/workers/engine/fsdp/transformer_impl.py:FSDPEngineWithLMHead.forward_step`` (verl 0.9.1).

:func:`install` wraps ``FSDPEngineWithLMHead.forward_step`` on the class (never copied). A micro-batch without
:data:`~verl_rhythm.glue.tq_fields.CAPTURE_KEY` goes straight to the stock method; only the actor's old-log-prob pass
of a rhythm run carries it (the trainer glue puts it there for that one call). With it, the stock forward runs inside
:func:`verl_rhythm.measure.hook.capture_active`, so the selected layers hand their post-RoPE q/k to a
:class:`~verl_rhythm.measure.capture.RhythmCapture` during that very forward (no second pass, no second model), and
the per-token WAAD and FAI join ``model_output`` as nested full-sequence tensors, exactly like ``log_probs``. verl's
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
import inspect
import logging
import time

import torch
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import build_attention_mask_from_nested

from verl_rhythm.glue import monkey_patch as ulysses
from verl_rhythm.glue import seams
from verl_rhythm.glue.checks import text_layer_types, text_num_layers
from verl_rhythm.glue.padding import nested_from_rows
from verl_rhythm.glue.tq_fields import CAPTURE_KEY, FAI_FULL, SEQ_STATS, WAAD_FULL
from verl_rhythm.measure import hook
from verl_rhythm.measure.capture import RhythmCapture
from verl_rhythm.measure.heads import SequenceRhythm
from verl_rhythm.measure.layout import SequenceLayout, layouts_from_attention_mask, layouts_from_position_ids
from verl_rhythm.measure.settings import CaptureSettings
from verl_rhythm.wrapping import is_wrapped

logger = logging.getLogger(__name__)


SEAM = "FSDPEngineWithLMHead.forward_step"
READS = ("micro_batch", "forward_only")
"""The parameters of ``forward_step`` the wrapper reads (every argument is passed through)."""
KNOWN = ("micro_batch", "loss_function", "forward_only")
"""verl 0.9.1's parameters of ``forward_step`` (:func:`verl_rhythm.glue.seams.mismatch`)."""


def install(module) -> None:
    """Wrap ``module.FSDPEngineWithLMHead.forward_step`` with :func:`forward_step`; idempotent. A ``forward_step`` that
    moved stays verl's own and is recorded as disabled (:mod:`verl_rhythm.glue.seams`)."""
    cls = getattr(module, "FSDPEngineWithLMHead", None)
    original = inspect.getattr_static(cls, "forward_step", None) if isinstance(cls, type) else None
    if is_wrapped(original):
        return
    if seams.checked(f"{module.__name__}.{SEAM}", original, method=True, reads=READS, known=KNOWN):
        cls.forward_step = seams.wrap(original, _forward_step)


def is_installed(module) -> bool:
    """Whether ``module.FSDPEngineWithLMHead.forward_step`` is the capturing wrapper."""
    cls = getattr(module, "FSDPEngineWithLMHead", None)
    return isinstance(cls, type) and is_wrapped(cls.__dict__.get("forward_step"))


def _forward_step(call: seams.Call):
    return forward_step(call.stock, call["self"], call["micro_batch"], forward_only=call["forward_only"])


@functools.lru_cache(maxsize=16)
def capture_settings(spec: str) -> CaptureSettings:
    """The :class:`CaptureSettings` of a :data:`CAPTURE_KEY` value, parsed once per distinct value."""
    return CaptureSettings.from_json(spec)


def forward_step(stock, engine, micro_batch, forward_only):
    """The stock forward step; with :data:`CAPTURE_KEY` on the micro-batch, also the rhythm outputs.

    Extra ``model_output`` keys (only when capturing): :data:`WAAD_FULL` and :data:`FAI_FULL`, nested
    ``(bsz, prompt_len + response_len)`` fp32 with each token at its own position; :data:`SEQ_STATS`, nested
    ``(bsz, 3)`` fp32 (see :data:`verl_rhythm.glue.tq_fields.SEQ_STATS_COLUMNS`).

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
    # host metadata, moved to the parameters' device now: nothing inside the forward waits on a copy
    capture.set_layouts(micro_batch_layouts(micro_batch, use_remove_padding=use_remove_padding))
    capture.to(_parameter_device(engine.module))
    if not hook.is_installed():
        hook.install_attention_hook()
    if engine.use_ulysses_sp:
        ulysses.install()  # idempotent
    own = time.perf_counter() - t0
    with hook.capture_active(capture):
        loss, output = stock()
    rhythms = capture.finalize()  # capture.seconds: time in record() during the forward, plus this
    seq_lens = micro_batch["input_ids"].offsets().diff().tolist()
    output["model_output"].update(rhythm_model_outputs(rhythms, seq_lens, seconds=capture.seconds + own))
    return loss, output


def micro_batch_layouts(micro_batch, *, use_remove_padding: bool) -> list[SequenceLayout]:
    """Where each sequence of a verl micro-batch lies in the model's attention inputs, and its response positions.

    verl's ``FSDPEngineWithLMHead.prepare_model_inputs`` feeds the model either one packed row
    (``use_remove_padding=True``: ``input_ids.values()`` back to back, ``position_ids`` restarting at 0 per sequence,
    possibly followed by a pad segment) or a right-padded ``(bsz, max_len)`` batch with
    ``build_attention_mask_from_nested``'s mask. Sequence i's response is its last ``len(response_mask[i])``
    positions; R is where that response mask is set.

    Args:
        micro_batch: TensorDict with nested ``input_ids``, ``position_ids`` ``(bsz, L_i)`` and ``response_mask``
            ``(bsz, r_i)``.
        use_remove_padding: which of the two inputs the engine builds.

    Returns:
        one :class:`SequenceLayout` per sequence, in batch order.

    Raises:
        ValueError: a missing or non-nested tensor, 3-D (mRoPE) position ids, or a layout that disagrees with
            ``input_ids.offsets()``.
    """
    for name in ("input_ids", "response_mask"):
        if name not in micro_batch.keys() or not micro_batch[name].is_nested:
            raise ValueError(f"the rhythm capture needs the nested '{name}' of verl's v1 (TransferQueue) batches")
    input_ids, response_mask = micro_batch["input_ids"], micro_batch["response_mask"]
    seq_lens = input_ids.offsets().diff().cpu()
    resp_lens = response_mask.offsets().diff().cpu()
    masks = []
    responses = response_mask.values().detach().cpu().bool().split(resp_lens.tolist())  # one copy to the host
    for i, (n, r) in enumerate(zip(seq_lens.tolist(), resp_lens.tolist(), strict=True)):
        if r > n:
            raise ValueError(f"sequence {i}: response_mask has {r} positions but input_ids only {n}")
        masks.append(torch.cat([torch.zeros(n - r, dtype=torch.bool), responses[i]]))
    if use_remove_padding:
        position_ids = micro_batch["position_ids"]
        if position_ids.dim() != 2:
            raise ValueError(
                f"position_ids of shape {tuple(position_ids.shape)}: the rhythm capture supports 1-D position ids "
                "per sequence (text models), not mRoPE"
            )
        layouts = layouts_from_position_ids(position_ids.values().detach().cpu().unsqueeze(0), masks)
        starts = input_ids.offsets()[:-1].cpu().tolist()
        if [lay.start for lay in layouts] != starts:
            raise ValueError(
                "position_ids do not restart at 0 at every sequence start of the packed row "
                f"(segments start at {[lay.start for lay in layouts]}, input_ids.offsets() at {starts})"
            )
        return layouts
    attention_mask = build_attention_mask_from_nested(input_ids, max_seq_len=int(seq_lens.max()))
    return layouts_from_attention_mask(attention_mask.cpu(), masks)


def _parameter_device(module) -> torch.device:
    """The device of the model's (local) parameters, where the forward's q/k will live."""
    for p in module.parameters():
        return getattr(p, "device", torch.device("cpu"))
    return torch.device("cpu")


def rhythm_model_outputs(rhythms: list[SequenceRhythm], seq_lens: list[int], seconds: float) -> dict:
    """The engine's extra ``model_output`` entries for one micro-batch.

    Args:
        rhythms: one :class:`SequenceRhythm` per sequence, in batch order (``RhythmCapture.finalize()``).
        seq_lens: L_i, the full length of each sequence.
        seconds: capture wall time of the micro-batch, split over the sequences by length.

    Returns:
        ``{WAAD_FULL: (bsz, L_i), FAI_FULL: (bsz, L_i), SEQ_STATS: (bsz, 3)}``, nested jagged fp32.
    """
    if len(rhythms) != len(seq_lens):
        raise ValueError(f"{len(rhythms)} captured sequences for a micro-batch of {len(seq_lens)}")
    for i, (r, n) in enumerate(zip(rhythms, seq_lens, strict=True)):
        if r.waad.shape != (n,) or r.fai.shape != (n,):
            raise ValueError(f"sequence {i}: captured {tuple(r.waad.shape)} statistics for {n} positions")
    total = max(sum(seq_lens), 1)
    stats = []
    for r, n in zip(rhythms, seq_lens, strict=True):
        span = r.span.float()
        share = span.new_tensor(seconds * n / total)
        stats.append(torch.stack([span[r.local_heads].mean(), span[r.global_heads].mean(), share]))
    return {
        WAAD_FULL: nested_from_rows([r.waad.float() for r in rhythms]),
        FAI_FULL: nested_from_rows([r.fai.float() for r in rhythms]),
        SEQ_STATS: nested_from_rows(stats),
    }
