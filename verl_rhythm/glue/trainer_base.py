# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/trainer/ppo/v1/trainer_base.py:PPOTrainer`` (verl 0.9.1), the v1 trainer every mode derives from.

Three methods are wrapped (never copied); each calls the stock method, and a run whose ``algorithm.adv_estimator``
is not ``rhythm`` goes straight to it, so stock runs are unchanged:

- ``init``: :func:`verl_rhythm.glue.checks.check_rhythm_run` first, so unsupported settings fail by key before any
  worker starts or any rollout runs.
- ``_compute_old_log_prob``: for strategies that read attention, :data:`~verl_rhythm.glue.tq_fields.CAPTURE_KEY`
  rides in ``batch.extra_info`` for exactly this call (the worker sees it as non-tensor data; the engine captures);
  then the engine's full-sequence outputs are sliced to the response layout, each token at its own position, and
  written back to TransferQueue as ``rhythm_waad`` / ``rhythm_fai``. Missing outputs stop the run here.
- ``_compute_advantage``: the response mask and the response-layout statistics (and verl's ``entropy`` for the
  entropy control) are fetched with the same row order and padding as the stock method uses, handed to the estimator
  through :func:`verl_rhythm.glue.core_algos.estimator_inputs` with the training step (γ is computed on this captured
  mask even when the stock step's rejection sampling drops tokens), and the ``rhythm/*`` metrics the estimator wrote
  into that same hand-off join the step's metrics.

``PPOTrainerSeparateAsync._compute_old_log_prob`` calls ``super()``, so every v1 mode goes through these wrappers.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import torch
import transfer_queue as tq
from tensordict import TensorDict

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue import contract
from verl_rhythm.glue import core_algos as rhythm_algos
from verl_rhythm.glue.checks import check_rhythm_run, is_rhythm_run
from verl_rhythm.glue.padding import response_from_nested_unshifted
from verl_rhythm.glue.tq_fields import (
    CAPTURE_KEY,
    ENGINE_OUTPUTS,
    FAI,
    FAI_FULL,
    SEQ_STATS,
    SEQ_STATS_COLUMNS,
    STATISTIC_FIELDS,
    WAAD,
    WAAD_FULL,
)
from verl_rhythm.wrapping import is_wrapped, mark
from verl_rhythm.wrapping import stock as _stock


class RhythmCaptureMissing(RuntimeError):
    """The actor's old-log-prob pass of a rhythm run returned no attention statistics."""


def install(module) -> None:
    """Wrap :data:`WRAPPED` on ``module.PPOTrainer``; idempotent (the stock methods stay reachable for tests)."""
    contract.warn_if_changed("verl.trainer.ppo.v1.trainer_base")
    cls = module.PPOTrainer
    for name, wrapper in WRAPPED.items():
        original = cls.__dict__[name]
        if not is_wrapped(original):
            setattr(cls, name, _wrap(original, wrapper))


def stock(cls, name: str):
    """The unwrapped verl method ``name`` of ``cls`` (what a non-rhythm config runs)."""
    return _stock(getattr(cls, name))


def _wrap(original, wrapper):
    @functools.wraps(original)
    def method(self, *args, **kwargs):
        return wrapper(original, self, *args, **kwargs)

    return mark(method, original)


def _rhythm_config(trainer) -> RhythmConfig | None:
    return RhythmConfig.from_algorithm_config(trainer.config.algorithm) if is_rhythm_run(trainer.config) else None


def _init(original, self):
    check_rhythm_run(self.config)
    return original(self)


def _compute_old_log_prob(original, self, batch, metrics: dict):
    cfg = _rhythm_config(self)
    if cfg is None or not cfg.needs_attention:
        return original(self, batch, metrics)
    batch.extra_info[CAPTURE_KEY] = json.dumps(cfg.to_dict(), sort_keys=True)
    t0 = time.perf_counter()
    try:
        out = original(self, batch, metrics)
    finally:
        batch.extra_info.pop(CAPTURE_KEY, None)
    elapsed = time.perf_counter() - t0
    if getattr(out, "extra_info", None):
        out.extra_info.pop(CAPTURE_KEY, None)
    world_size = int(getattr(self.actor_rollout_wg, "world_size", 1) or 1)
    metrics.update(store_response_statistics(batch, cfg, world_size=world_size, stage_seconds=elapsed))
    return out


def store_response_statistics(batch, cfg: RhythmConfig, *, world_size: int, stage_seconds: float) -> dict[str, float]:
    """Slice the engine's full-sequence WAAD/FAI to the response layout, write them back, return capture metrics.

    Args:
        batch: the ``KVBatchMeta`` of the step (keys and partition in TransferQueue).
        cfg: the run's rhythm config (named in the error).
        world_size: number of actor ranks (the capture seconds are summed over them).
        stage_seconds: wall time of the whole old-log-prob stage, for ``rhythm/capture_share``.

    Raises:
        RhythmCaptureMissing: the worker outputs are absent (the plugin did not load in a worker, the engine is not
            the rhythm engine, or the capture key never reached it).
    """
    data = tq.kv_batch_get(
        keys=batch.keys, partition_id=batch.partition_id, select_fields=[*ENGINE_OUTPUTS, "response_mask"]
    )
    missing = [f for f in ENGINE_OUTPUTS if f not in data.keys()]
    if missing:
        raise RhythmCaptureMissing(
            f"algorithm.rhythm.strategy={cfg.strategy!r}: the actor's old-log-prob pass returned no {missing}. "
            "The rhythm engine did not run in the actor workers: check that verl-rhythm is installed in the workers' "
            "Python environment (its 'verl.plugins' entry point must load there: VERL_USE_EXTERNAL_PLUGINS unset, "
            "'auto' or listing 'rhythm'), that the GPUs are NVIDIA (the engine is registered for vendor 'nvidia') and "
            "that actor_rollout_ref.actor.strategy is fsdp or fsdp2. Stopping instead of training plain GRPO."
        )
    mask = data["response_mask"]
    waad = response_from_nested_unshifted(data[WAAD_FULL], mask)
    fai = response_from_nested_unshifted(data[FAI_FULL], mask)
    fields = TensorDict({WAAD: waad, FAI: fai}, batch_size=len(batch.keys))
    tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
    return capture_metrics(data[SEQ_STATS], mask, world_size=world_size, stage_seconds=stage_seconds)


def capture_metrics(seq_stats: torch.Tensor, response_mask: torch.Tensor, *, world_size: int, stage_seconds: float):
    """``rhythm/span_*`` and ``rhythm/capture_*`` from the engine's per-sequence statistics.

    Args:
        seq_stats: nested ``(bsz, 3)``, columns :data:`SEQ_STATS_COLUMNS`.
        response_mask: nested ``(bsz, r_i)``; spans are averaged over sequences with at least one response token.
    """
    stats = torch.stack([row.float() for row in seq_stats.unbind()])  # (bsz, 3)
    has_response = torch.tensor([bool(m.bool().any()) for m in response_mask.unbind()])
    col = {name: stats[:, i] for i, name in enumerate(SEQ_STATS_COLUMNS)}
    rows = has_response if bool(has_response.any()) else torch.ones_like(has_response)
    capture_s = float(col["capture_s"].sum()) / max(world_size, 1)
    return {
        "rhythm/span_local_mean": float(col["span_local"][rows].mean()),
        "rhythm/span_global_mean": float(col["span_global"][rows].mean()),
        "rhythm/capture_s": capture_s,
        "rhythm/capture_share": capture_s / stage_seconds if stage_seconds > 0 else 0.0,
    }


def _compute_advantage(original, self, batch, metrics: dict):
    cfg = _rhythm_config(self)
    if cfg is None:
        return original(self, batch, metrics)
    fields = fetch_fields(cfg)
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask", *fields])
    missing = [f for f in fields if f not in data.keys()]
    if missing:
        raise RhythmCaptureMissing(
            f"algorithm.rhythm.strategy={cfg.strategy!r}: TransferQueue holds no {missing} for the advantage step "
            "(the old-log-prob pass did not write them)"
        )
    padded = data.to_padded_tensor()  # the same padding as the stock step's DataProto(batch=...)
    response_mask = padded["response_mask"]  # as captured: rejection sampling may drop tokens inside the stock step
    inputs = {f: padded[f] for f in fields}
    step = int(getattr(self, "global_steps", 0) or 0)
    with rhythm_algos.estimator_inputs(response_mask, step=step, **inputs) as handoff:
        out = original(self, batch, metrics)
    if not handoff.metrics:
        raise RuntimeError(
            "algorithm.adv_estimator=rhythm but verl's _compute_advantage never called the rhythm estimator; "
            "see verl_rhythm/glue/contract.py for the verl internals this plugin relies on"
        )
    metrics.update(handoff.metrics)
    if cfg.needs_attention:
        metrics.update(statistic_means(inputs[WAAD], inputs[FAI], response_mask))
    return out


def fetch_fields(cfg: RhythmConfig) -> list[str]:
    """The response-layout fields the advantage step fetches for ``cfg``'s strategy: both capture outputs when it
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


WRAPPED = {"init": _init, "_compute_old_log_prob": _compute_old_log_prob, "_compute_advantage": _compute_advantage}
"""verl ``PPOTrainer`` method → its wrapper (the single list of what this module wraps)."""
