# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/trainer/ppo/v1/trainer_base.py:PPOTrainer`` (verl 0.9.1), the v1 trainer every mode derives from.

The TransferQueue half of the trainer glue; what every trainer shares is :mod:`verl_rhythm.glue.statistics`. Three
methods are wrapped (never copied); each calls the stock method, and a run whose ``algorithm.adv_estimator`` is not
``rhythm`` goes straight to it, so stock runs are unchanged:

- ``init``: :func:`verl_rhythm.glue.checks.check_rhythm_run` first, so unsupported settings fail by key before any
  worker starts or any rollout runs.
- ``_compute_old_log_prob``: for strategies that read attention, the capture key rides in ``batch.extra_info`` for
  exactly this call (verl's ``tqbridge`` hands ``extra_info`` to the worker as non-tensor data; the engine
  captures and every tensor output lands in TransferQueue, WAAD and FAI already in the response layout as
  ``rhythm_waad`` / ``rhythm_fai``); the trainer reads back only the per-sequence capture statistics, for the
  metrics. Missing outputs stop the run here.
- ``_compute_advantage``: the response mask and the response-layout statistics (and verl's ``entropy`` for the
  entropy control) are fetched with the same row order and padding as the stock method uses
  (``KVBatchMeta`` → ``to_padded_tensor``) and handed to the estimator around the stock call
  (:func:`~verl_rhythm.glue.statistics.advantage_handoff`) with the step
  :func:`~verl_rhythm.glue.statistics.draw_step` of ``global_steps`` and the sub-step ``local_trigger_step`` of
  ``parameter_sync_step``; the ``rhythm/*`` metrics join the step's. The ``KVBatchMeta`` it returns lists none of
  :data:`~verl_rhythm.glue.tq_fields.RHYTHM_FIELDS`: the actor update (``tqbridge`` fetches a batch's ``fields``)
  never receives them.

Each wrapper passes every argument through to the stock method and reads the ones it needs by name
(:class:`verl_rhythm.glue.seams.Call`); a method whose name or parameters changed in a later verl is left as verl's own
and disables rhythm, loudly (:mod:`verl_rhythm.glue.seams`).

Every mode reaches these wrappers: ``sync`` and ``colocate_async`` inherit the three methods, and
``PPOTrainerSeparateAsync._compute_old_log_prob`` (``trainer_separate_async.py``) calls ``super()`` around its
weight swap.
"""

from __future__ import annotations

import inspect

import torch
import transfer_queue as tq

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue import seams
from verl_rhythm.glue.checks import check_rhythm_run, is_rhythm_run
from verl_rhythm.glue.statistics import (
    RhythmCaptureMissing,
    advantage_handoff,
    capture_metrics,
    capture_requested,
    capture_rows,
    check_engine_outputs,
    draw_step,
    fetch_fields,
    rhythm_config,
)
from verl_rhythm.glue.tq_fields import CAPTURE_KEY, ENGINE_OUTPUTS, RHYTHM_FIELDS, SEQ_STATS
from verl_rhythm.wrapping import is_wrapped
from verl_rhythm.wrapping import stock as _stock


def install(module) -> None:
    """Wrap :data:`WRAPPED` on ``module.PPOTrainer``; idempotent (the stock methods stay reachable for tests).

    Each method is checked first (:func:`verl_rhythm.glue.seams.mismatch`); one that moved stays verl's own and is
    recorded as disabled. If ``init`` moved, ``PPOTrainer.__init__`` gets the start-up guard instead
    (:func:`verl_rhythm.glue.seams.guard`: a rhythm config is refused before the stock constructor runs).
    """
    cls = getattr(module, "PPOTrainer", None)
    if not isinstance(cls, type):
        seams.record_disabled(f"{module.__name__}.PPOTrainer", "not found")
        return
    for name, wrapper in WRAPPED.items():
        if not seams.wrap_method(module, "PPOTrainer", name, wrapper, **SHAPES[name]) and name == "init":
            _guard_constructor(cls)


def _guard_constructor(cls) -> None:
    original = cls.__dict__.get("__init__")
    if inspect.isfunction(original) and not is_wrapped(original):  # the guard passes every argument through
        cls.__init__ = seams.guard(original, lambda call: is_rhythm_run(call["config"]))


def stock(cls, name: str):
    """The unwrapped verl method ``name`` of ``cls`` (what a non-rhythm config runs)."""
    return _stock(getattr(cls, name))


def _init(call: seams.Call):
    check_rhythm_run(call["self"].config)
    return call.stock()


def _compute_old_log_prob(call: seams.Call):
    self, batch, metrics = call["self"], call["batch"], call["metrics"]
    cfg = rhythm_config(self.config)
    if cfg is None or not cfg.needs_attention:
        return call.stock()
    with capture_requested(batch.extra_info, cfg) as timing:
        out = call.stock()
    if getattr(out, "extra_info", None):
        out.extra_info.pop(CAPTURE_KEY, None)
    metrics.update(capture_statistics(out, cfg, stage_seconds=timing["seconds"]))
    return out


def capture_statistics(batch, cfg: RhythmConfig, *, stage_seconds: float) -> dict[str, float]:
    """Check that the engine's outputs reached TransferQueue and return the capture metrics.

    Only the per-sequence statistics and the response mask are fetched: WAAD and FAI stay in TransferQueue, already
    in the response layout, until the advantage step.

    Args:
        batch: the ``KVBatchMeta`` the stock step returned (``tq.kv_batch_put``'s, whose ``fields`` list every field
            TransferQueue holds for its samples; without a list, one sample is fetched to see its fields).
        cfg: the run's rhythm config (named in the error).
        stage_seconds: wall time of the whole old-log-prob stage, for ``rhythm/capture_share``.

    Raises:
        RhythmCaptureMissing: the worker outputs are absent (the plugin did not load in a worker, the engine has no
            capture, or the capture key never reached it).
    """
    present = batch.fields
    if present is None:
        present = tq.kv_batch_get(keys=batch.keys[:1], partition_id=batch.partition_id, select_fields=[*ENGINE_OUTPUTS])
        present = present.keys()
    check_engine_outputs(present, cfg)
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[SEQ_STATS, "response_mask"])
    has_response = torch.tensor([bool(m.bool().any()) for m in data["response_mask"].unbind()])
    return capture_metrics(capture_rows(data[SEQ_STATS], stage_seconds=stage_seconds), has_response)


def _compute_advantage(call: seams.Call):
    self, batch, metrics = call["self"], call["batch"], call["metrics"]
    cfg = rhythm_config(self.config)
    if cfg is None:
        return call.stock()
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
    step = draw_step(self.global_steps, self.local_trigger_step, self.parameter_sync_step)  # PPOTrainer.step
    with advantage_handoff(cfg, response_mask, {f: padded[f] for f in fields}, step=step) as rhythm_metrics:
        out = call.stock()
    metrics.update(rhythm_metrics)
    if out.fields is not None:  # the update steps fetch exactly these (tqbridge → select_fields)
        out.fields = [f for f in out.fields if f not in RHYTHM_FIELDS]
    return out


WRAPPED = {"init": _init, "_compute_old_log_prob": _compute_old_log_prob, "_compute_advantage": _compute_advantage}
"""verl ``PPOTrainer`` method → its wrapper (the single list of what this module wraps)."""
SHAPES = {
    "init": {"reads": (), "known": ()},
    "_compute_old_log_prob": {"reads": ("batch", "metrics"), "known": ("batch", "metrics")},
    "_compute_advantage": {"reads": ("batch", "metrics"), "known": ("batch", "metrics")},
}
"""Per wrapped method, the parameters its wrapper reads and verl 0.9.1's parameters (:func:`seams.mismatch`)."""
