# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/workers/engine/fsdp/transformer_impl.py:FSDPEngineWithLMHead.forward_step`` (verl 0.9.1).

:class:`RhythmFSDPEngineWithLMHead` is the stock engine plus one branch in ``forward_step``: when the micro-batch
carries :data:`~verl_rhythm.glue.tq_fields.CAPTURE_KEY` (only the actor's old-log-prob pass of a rhythm run does,
see :mod:`verl_rhythm.glue.trainer_base`), the stock forward runs inside
:func:`verl_rhythm.measure.hook.capture_active`, so the selected layers hand their post-RoPE q/k to a
:class:`~verl_rhythm.measure.capture.RhythmCapture` during that very forward (no second pass, no second model), and
the per-token WAAD and FAI join ``model_output`` as nested full-sequence tensors, exactly like ``log_probs``.
verl's ``postprocess_batch_func`` concatenates every ``model_output`` key over micro-batches and undoes the dynamic
batching order; ``tqbridge`` writes every tensor key to TransferQueue. Without the key the stock method runs.

It is registered with ``EngineRegistry.register(..., device="cuda", vendor="nvidia")`` and, for the CPU backend
(:mod:`verl_rhythm.backends.cpu`), ``device="cpu", vendor="cpu"``; ``EngineRegistry.get_engine_cls``
(``verl/workers/engine/base.py``) prefers a (device, vendor) entry to the stock device-only one, so a stock config
builds it on NVIDIA GPUs and on the CPU platform. Other vendors get the stock engine: a rhythm run then stops at the
first old-log-prob pass with the missing-capture error (never a silent GRPO run).
"""

from __future__ import annotations

import json
import logging
import time

import torch
from verl.utils import tensordict_utils as tu
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.utils.padding import build_attention_mask_from_nested

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue import contract
from verl_rhythm.glue import monkey_patch as ulysses
from verl_rhythm.glue.checks import text_layer_types, text_num_layers
from verl_rhythm.glue.padding import nested_from_rows
from verl_rhythm.glue.tq_fields import CAPTURE_KEY, FAI_FULL, SEQ_STATS, WAAD_FULL
from verl_rhythm.measure.capture import (
    RhythmCapture,
    SequenceLayout,
    layouts_from_attention_mask,
    layouts_from_position_ids,
)
from verl_rhythm.measure.heads import SequenceRhythm
from verl_rhythm.measure.hook import capture_active, install_attention_hook

logger = logging.getLogger(__name__)

REGISTRY_KEYS = (
    {"model_type": "language_model", "backend": ["fsdp", "fsdp2"], "device": "cuda", "vendor": "nvidia"},
    {"model_type": "language_model", "backend": ["fsdp", "fsdp2"], "device": "cpu", "vendor": "cpu"},
)
"""Where :class:`RhythmFSDPEngineWithLMHead` is registered: NVIDIA GPUs and verl-rhythm's CPU platform."""


class RhythmFSDPEngineWithLMHead(FSDPEngineWithLMHead):
    """verl's FSDP language-model engine with the rhythm capture in the actor's old-log-prob forward."""

    def forward_step(self, micro_batch, loss_function, forward_only):
        """The stock forward step; with :data:`CAPTURE_KEY` on the micro-batch, also the rhythm outputs.

        Extra ``model_output`` keys (only when capturing): :data:`WAAD_FULL` and :data:`FAI_FULL`, nested
        ``(bsz, prompt_len + response_len)`` fp32 with each token at its own position; :data:`SEQ_STATS`, nested
        ``(bsz, 3)`` fp32 (see :data:`verl_rhythm.glue.tq_fields.SEQ_STATS_COLUMNS`).
        """
        spec = tu.get_non_tensor_data(data=micro_batch, key=CAPTURE_KEY, default=None)
        if spec is None:
            return super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        if not forward_only or torch.is_grad_enabled():
            raise RuntimeError(
                f"'{CAPTURE_KEY}' reached a forward step with gradients (forward_only={forward_only}): the rhythm "
                "capture runs only in the actor's no-grad old-log-prob pass"
            )
        t0 = time.perf_counter()
        cfg = RhythmConfig.from_dict(json.loads(spec))
        hf_config = self.model_config.hf_config
        # Ulysses: each rank records whole rows of its heads below verl's all-to-all (glue/monkey_patch.py); the
        # capture combines the ranks' heads at finalize
        group = self.ulysses_parallel_group if self.use_ulysses_sp else None
        capture = RhythmCapture(cfg, text_num_layers(hf_config), layer_types=text_layer_types(hf_config), group=group)
        use_remove_padding = tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
        # host metadata, moved to the parameters' device now: nothing inside the forward waits on a copy
        capture.set_layouts(micro_batch_layouts(micro_batch, use_remove_padding=use_remove_padding))
        capture.to(_parameter_device(self.module))
        install_attention_hook()  # idempotent; re-wraps entries replaced since (e.g. by verl's monkey patches)
        if self.use_ulysses_sp:
            ulysses.install()  # verl's Ulysses path: normally done when verl imported it (glue/plugin.py)
        own = time.perf_counter() - t0
        with capture_active(capture):
            loss, output = super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
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


def is_registered(key: dict) -> bool:
    """Whether :class:`RhythmFSDPEngineWithLMHead` is the engine ``EngineRegistry`` holds under ``key``."""
    registry = EngineRegistry._engines.get(key["model_type"], {})
    return all(
        registry.get(b, {}).get((key["device"], key["vendor"])) is RhythmFSDPEngineWithLMHead for b in key["backend"]
    )


def install(module=None) -> bool:
    """Register :class:`RhythmFSDPEngineWithLMHead` under :data:`REGISTRY_KEYS`; idempotent. Returns whether it is
    registered under every key.

    A clash with another plugin's registration is logged, not raised: a stock run must not break because of this
    plugin, and a rhythm run then stops at its first old-log-prob pass with the missing-capture error.
    """
    contract.warn_if_changed("verl.workers")
    ok = True
    for key in REGISTRY_KEYS:
        if is_registered(key):
            continue
        try:
            EngineRegistry.register(**key)(RhythmFSDPEngineWithLMHead)
        except AssertionError as err:
            logger.warning("verl-rhythm: engine not registered (%s); rhythm runs will stop at the capture check", err)
            ok = False
    return ok


install()  # registering is part of defining the engine, as verl's own @EngineRegistry.register
