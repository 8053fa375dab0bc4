# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The trainer half of the glue that every verl trainer shares: capture switch, statistics, hand-off, metrics.

verl 0.9.1 has two trainer families on the same engine workers (``verl/workers/engine_workers.py:
ActorRolloutRefWorker.compute_log_prob`` → ``TrainingWorker.infer_batch`` → the engine): the v1 ``PPOTrainer``
(``verl/trainer/ppo/v1/trainer_base.py``; batches in TransferQueue) and the legacy ``RayPPOTrainer``
(``verl/trainer/ppo/ray_trainer.py``; a driver-side ``DataProto``), which recipe trainers subclass. What differs is
only where a batch lives; that part is in one thin module per seam (:mod:`verl_rhythm.glue.trainer_base`,
:mod:`verl_rhythm.glue.ray_trainer`, :mod:`verl_rhythm.glue.metric_utils`). Everything here works on tensors and
plain mappings and imports neither TransferQueue nor a trainer:

1. :func:`capture_requested` puts :data:`~verl_rhythm.glue.tq_fields.CAPTURE_KEY` into the non-tensor data of the
   actor's old-log-prob call (v1: ``batch.extra_info``; legacy: ``DataProto.meta_info``, which
   ``verl/protocol.py:DataProto.to_tensordict`` turns into non-tensor data), and only of that call.
2. The engine returns WAAD and FAI already in the response layout, each token at its own position
   (:mod:`verl_rhythm.glue.transformer_impl`); :func:`capture_rows` and :func:`capture_metrics` turn its
   per-sequence outputs into the ``rhythm/span_*`` and ``rhythm/capture_*`` metrics.
3. :func:`advantage_handoff` wraps verl's own advantage call (v1 ``PPOTrainer._compute_advantage``, legacy
   ``ray_trainer.compute_advantage``) in :func:`verl_rhythm.glue.core_algos.estimator_inputs` and returns the
   ``rhythm/*`` metrics the estimator wrote, plus the means of the statistics it used; :func:`draw_step` is the
   step it hands over (what the ``random`` control seeds with).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import torch

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue import core_algos as rhythm_algos
from verl_rhythm.glue import seams
from verl_rhythm.glue.checks import is_rhythm_run
from verl_rhythm.glue.tq_fields import (
    CAPTURE_KEY,
    ENGINE_OUTPUTS,
    FAI,
    SEQ_STATS_COLUMNS,
    STATISTIC_FIELDS,
    WAAD,
    capture_request,
)

CAPTURE_ROW_COLUMNS = ("span_local", "span_global", "capture_s", "stage_s")
"""Columns of :func:`capture_rows`: the engine's :data:`~verl_rhythm.glue.tq_fields.SEQ_STATS_COLUMNS` with the
capture seconds (already divided by the data-parallel size in the engine), and the row's share of the old-log-prob
stage's wall time.
Sums over any subset of rows stay meaningful, so a recipe that filters or concatenates batches keeps them right."""

MISSING_CAPTURE = (
    "algorithm.rhythm.strategy={strategy!r}: the actor's old-log-prob pass returned no {missing}. The rhythm capture "
    "did not run in the actor workers: check that verl-rhythm is installed in the workers' Python environment (its "
    "'verl.plugins' entry point must load there: VERL_USE_EXTERNAL_PLUGINS unset, 'auto' or listing 'rhythm'), that "
    "actor_rollout_ref.actor.strategy is an FSDP engine, and that the trainer's old-log-prob step calls the stock "
    "one. Stopping instead of training plain GRPO."
)


class RhythmCaptureMissing(RuntimeError):
    """The actor's old-log-prob pass of a rhythm run returned no attention statistics."""


def rhythm_config(config: Any) -> RhythmConfig | None:
    """The run's :class:`RhythmConfig` from the full verl config, or ``None`` when it is not a rhythm run.

    Raises:
        RhythmDisabled: a rhythm run where a seam of the glue moved (:func:`verl_rhythm.glue.seams.refuse`).
    """
    if not is_rhythm_run(config):
        return None
    seams.refuse()
    return RhythmConfig.from_algorithm_config(config.algorithm)


@contextlib.contextmanager
def capture_requested(non_tensor: MutableMapping[str, Any], cfg: RhythmConfig) -> Iterator[dict[str, float]]:
    """Ask the engine to capture for the calls made inside this block, and time them.

    Args:
        non_tensor: the mapping verl turns into the worker call's non-tensor data (``KVBatchMeta.extra_info`` or
            ``DataProto.meta_info``); the key is removed again on exit, so no other pass sees it.
        cfg: the run's config (:func:`~verl_rhythm.glue.tq_fields.capture_request` serialises what the engine needs).

    Yields:
        a dict whose ``"seconds"`` holds the block's wall time once it exits.
    """
    timing = {"seconds": 0.0}
    non_tensor[CAPTURE_KEY] = capture_request(cfg)
    t0 = time.perf_counter()
    try:
        yield timing
    finally:
        timing["seconds"] = time.perf_counter() - t0
        non_tensor.pop(CAPTURE_KEY, None)


def check_engine_outputs(keys, cfg: RhythmConfig) -> None:
    """Stop when the worker outputs (``keys``) lack any of :data:`~verl_rhythm.glue.tq_fields.ENGINE_OUTPUTS`.

    Raises:
        RhythmCaptureMissing: naming the strategy and what to check.
    """
    present = set(keys)
    missing = [f for f in ENGINE_OUTPUTS if f not in present]
    if missing:
        raise RhythmCaptureMissing(MISSING_CAPTURE.format(strategy=cfg.strategy, missing=missing))


def capture_rows(seq_stats: torch.Tensor, *, stage_seconds: float) -> torch.Tensor:
    """Per-row capture statistics, columns :data:`CAPTURE_ROW_COLUMNS`.

    Args:
        seq_stats: the engine's nested ``(bsz, 3)``, columns :data:`~verl_rhythm.glue.tq_fields.SEQ_STATS_COLUMNS`
            (the capture seconds of a sequence are its share of its rank's micro-batch over the data-parallel
            size, so they add up to the mean capture time of a rank).
        stage_seconds: wall time of the whole old-log-prob stage, spread evenly over the rows.

    Returns:
        ``(bsz, 4)`` float32.
    """
    stats = torch.stack([row.float().reshape(-1) for row in seq_stats.unbind()])  # (bsz, 3)
    col = {name: stats[:, i] for i, name in enumerate(SEQ_STATS_COLUMNS)}
    stage = torch.full_like(col["capture_s"], stage_seconds / max(stats.shape[0], 1))
    return torch.stack([col["span_local"], col["span_global"], col["capture_s"], stage], dim=-1).float()


def capture_metrics(rows: torch.Tensor, has_response: torch.Tensor) -> dict[str, float]:
    """``rhythm/span_*`` and ``rhythm/capture_*`` of a batch.

    Args:
        rows: ``(bsz, 4)`` from :func:`capture_rows`.
        has_response: ``(bsz,)`` bool; spans are averaged over rows with at least one response token (all rows if
            none has one).
    """
    rows = rows.float().cpu()
    keep = has_response.bool().cpu()
    keep = keep if bool(keep.any()) else torch.ones_like(keep)
    col = {name: rows[:, i] for i, name in enumerate(CAPTURE_ROW_COLUMNS)}
    capture_s = float(col["capture_s"].sum())
    stage_s = float(col["stage_s"].sum())
    return {
        "rhythm/span_local_mean": float(col["span_local"][keep].mean()),
        "rhythm/span_global_mean": float(col["span_global"][keep].mean()),
        "rhythm/capture_s": capture_s,
        "rhythm/capture_share": capture_s / stage_s if stage_s > 0 else 0.0,
    }


def draw_step(global_step: int, sub_step: int = 0, sub_steps: int = 1) -> int:
    """The step the estimator gets for an advantage call: the ``random`` control draws from ``seed`` + this.

    ``global_step * sub_steps + sub_step``: distinct for every advantage call of a run, and a function of the
    trainer's ``global_steps`` (restored from the checkpoint on resume) and the position within it only, so a
    resumed run draws what the uninterrupted one drew. The legacy trainer has one call per step (``sub_steps=1``:
    ``global_step``); the v1 trainer has ``parameter_sync_step`` (``trainer.v1.<trainer_mode>.parameter_sync_step``,
    1 unless the mode sets it) calls per step, sub-step ``local_trigger_step`` (``PPOTrainer.step``).

    Raises:
        ValueError: a negative step, ``sub_steps`` < 1, or ``sub_step`` outside ``[0, sub_steps)``.
    """
    global_step, sub_step, sub_steps = int(global_step), int(sub_step), int(sub_steps)
    if global_step < 0 or sub_steps < 1 or not 0 <= sub_step < sub_steps:
        raise ValueError(f"draw_step: global_step={global_step}, sub_step={sub_step}, sub_steps={sub_steps}")
    return global_step * sub_steps + sub_step


def fetch_fields(cfg: RhythmConfig) -> list[str]:
    """The response-layout fields the advantage step needs for ``cfg``'s strategy: both capture outputs when it
    reads attention (the capture writes both; the report metrics use both), and the entropy when it needs it."""
    fields = [WAAD, FAI] if cfg.needs_attention else []
    return fields + [STATISTIC_FIELDS[s] for s in cfg.needs if STATISTIC_FIELDS[s] not in fields]


def statistic_means(waad: torch.Tensor, fai: torch.Tensor, response_mask: torch.Tensor) -> dict[str, Any]:
    """Mean WAAD and FAI over the valid response tokens of a padded ``(bs, response_length)`` batch."""
    mask = response_mask.bool()
    n = max(int(mask.sum()), 1)
    return {
        "rhythm/waad_mean": float((waad.float() * mask).sum()) / n,
        "rhythm/fai_mean": float((fai.float() * mask).sum()) / n,
    }


@contextlib.contextmanager
def advantage_handoff(
    cfg: RhythmConfig, response_mask: torch.Tensor, fields: Mapping[str, torch.Tensor], *, step: int
) -> Iterator[dict[str, float]]:
    """Hand the statistics to the estimator for verl's advantage call made inside this block; collect its metrics.

    Args:
        cfg: the run's config.
        response_mask: ``(bs, response_length)``, the mask the statistics were captured on (verl's rejection sampling
            may drop tokens of it before the estimator runs).
        fields: :func:`fetch_fields` → ``(bs, response_length)`` tensors, rows in the order verl's advantage call
            passes them.
        step: :func:`draw_step` of the call (the ``random`` control draws from ``seed + step``).

    Yields:
        a dict that holds, once the block exits, the estimator's ``rhythm/*`` metrics and, for strategies that read
        attention, ``rhythm/waad_mean`` and ``rhythm/fai_mean``.

    Raises:
        RuntimeError: verl's advantage call never reached the rhythm estimator.
    """
    metrics: dict[str, float] = {}
    with rhythm_algos.estimator_inputs(response_mask, step=step, **fields) as handoff:
        yield metrics
    if not handoff.metrics:
        raise RuntimeError(
            "algorithm.adv_estimator=rhythm but verl's advantage step never called the rhythm estimator; "
            "see verl_rhythm/glue/contract.py for the verl internals this plugin relies on"
        )
    metrics.update(handoff.metrics)
    if cfg.needs_attention:
        metrics.update(statistic_means(fields[WAAD], fields[FAI], response_mask))
