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
2. :func:`response_statistics` slices the engine's full-sequence outputs to the response layout, each token at its
   own position; :func:`capture_rows` and :func:`capture_metrics` turn the per-sequence outputs into the
   ``rhythm/span_*`` and ``rhythm/capture_*`` metrics.
3. :func:`advantage_handoff` wraps verl's own advantage call (v1 ``PPOTrainer._compute_advantage``, legacy
   ``ray_trainer.compute_advantage``) in :func:`verl_rhythm.glue.core_algos.estimator_inputs` and returns the
   ``rhythm/*`` metrics the estimator wrote, plus the means of the statistics it used.
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
from verl_rhythm.glue.padding import response_from_nested_unshifted
from verl_rhythm.glue.tq_fields import (
    CAPTURE_KEY,
    ENGINE_OUTPUTS,
    FAI,
    FAI_FULL,
    SEQ_STATS_COLUMNS,
    STATISTIC_FIELDS,
    WAAD,
    WAAD_FULL,
    capture_request,
)

CAPTURE_ROW_COLUMNS = ("span_local", "span_global", "capture_s", "stage_s")
"""Columns of :func:`capture_rows`: the engine's :data:`~verl_rhythm.glue.tq_fields.SEQ_STATS_COLUMNS` with the
capture seconds divided by the number of actor ranks, and the row's share of the old-log-prob stage's wall time.
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


def response_statistics(outputs: Mapping[str, torch.Tensor], response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """WAAD and FAI of the response tokens, each at its own position, from the engine's full-sequence outputs.

    Args:
        outputs: the worker's outputs with :data:`~verl_rhythm.glue.tq_fields.WAAD_FULL` and
            :data:`~verl_rhythm.glue.tq_fields.FAI_FULL`, nested ``(bsz, prompt_len_i + response_len_i)``.
        response_mask: nested ``(bsz, response_len_i)``; only its row lengths are used.

    Returns:
        ``{rhythm_waad, rhythm_fai}``, nested ``(bsz, response_len_i)``.
    """
    return {
        WAAD: response_from_nested_unshifted(outputs[WAAD_FULL], response_mask),
        FAI: response_from_nested_unshifted(outputs[FAI_FULL], response_mask),
    }


def nested_rows(lengths: torch.Tensor) -> torch.Tensor:
    """A nested jagged ``(bsz, lengths_i)`` tensor of ones: row lengths in the form :func:`response_statistics` takes.

    Args:
        lengths: ``(bsz,)`` integer row lengths.
    """
    lengths = lengths.long().cpu()
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    return torch.nested.nested_tensor_from_jagged(torch.ones(int(offsets[-1])), offsets)


def capture_rows(seq_stats: torch.Tensor, *, world_size: int, stage_seconds: float) -> torch.Tensor:
    """Per-row capture statistics, columns :data:`CAPTURE_ROW_COLUMNS`.

    Args:
        seq_stats: the engine's nested ``(bsz, 3)``, columns :data:`~verl_rhythm.glue.tq_fields.SEQ_STATS_COLUMNS`
            (the capture seconds of a sequence are its share of its rank's micro-batch).
        world_size: number of actor ranks (the capture seconds of all ranks add up in ``seq_stats``).
        stage_seconds: wall time of the whole old-log-prob stage, spread evenly over the rows.

    Returns:
        ``(bsz, 4)`` float32.
    """
    stats = torch.stack([row.float().reshape(-1) for row in seq_stats.unbind()])  # (bsz, 3)
    col = {name: stats[:, i] for i, name in enumerate(SEQ_STATS_COLUMNS)}
    stage = torch.full_like(col["capture_s"], stage_seconds / max(stats.shape[0], 1))
    return torch.stack(
        [col["span_local"], col["span_global"], col["capture_s"] / max(world_size, 1), stage], dim=-1
    ).float()


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
        step: the training step (``global_steps``; the ``random`` control draws from ``seed + step``).

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
