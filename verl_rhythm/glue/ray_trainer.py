# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/trainer/ppo/ray_trainer.py`` (verl 0.9.1), the legacy trainer ``RayPPOTrainer`` and its advantage step.

The ``DataProto`` half of the trainer glue (``trainer.use_v1=false``, ``main_ppo_v0``, and every recipe trainer that
subclasses ``RayPPOTrainer``, e.g. the DAPO recipe's); what every trainer shares is
:mod:`verl_rhythm.glue.statistics`. The batch lives in the driver, so the statistics ride in it as response-layout
fields, row-aligned through any reordering, filtering or concatenation a recipe's ``fit`` does between the passes.
Wrapped (never copied); a run whose ``algorithm.adv_estimator`` is not ``rhythm`` goes straight to the stock code:

- ``RayPPOTrainer.__init__``: :func:`verl_rhythm.glue.checks.check_rhythm_run` first (the legacy trainer has no
  ``init``; its workers start in ``init_workers``, after the constructor), and, for a rhythm run, the collect
  function of ``ActorRolloutRefWorker.compute_log_prob`` is made to keep its result while a capture is requested
  (:func:`keep_collected_outputs`).
- ``RayPPOTrainer._compute_old_log_prob(batch)``: for strategies that read attention, the capture key rides in
  ``batch.meta_info`` for exactly this call (``DataProto.to_tensordict`` makes ``meta_info`` the non-tensor data of
  the worker's ``TensorDict``). The stock method reads only ``log_probs``/``entropy`` of the ``TensorDict`` the
  worker group returns; that result passes through the collect function verl registered for the method
  (``verl/single_controller/base/decorator.py:collect_lazy_compute_data_proto``, bound per worker group by
  ``WorkerGroup._bind_worker_method``), which keeps it for this call. The engine has already sliced WAAD and FAI
  to the responses; they are right-padded like ``no_padding_2_padding`` into the returned ``DataProto``, which
  ``fit`` unions into the batch: ``rhythm_waad``, ``rhythm_fai``, :data:`CAPTURED_MASK` (the mask the statistics
  sit on, before rejection sampling edits ``response_mask``), :data:`CAPTURE_ROW` (per-row capture statistics)
  and :data:`STEP` (the training step, ``global_steps``); ``entropy`` for strategies that rank by it (the stock
  ``fit`` drops ``entropys`` before the union).
- ``compute_advantage(data, adv_estimator, ...)`` (module function; ``fit`` and recipes such as the DAPO recipe
  import it from this module): the fields are handed to the estimator around the stock call
  (:func:`~verl_rhythm.glue.statistics.advantage_handoff`, step from :data:`STEP`), then popped from ``data``
  (:data:`BATCH_FIELDS`), so the actor update does not receive them; the ``rhythm/*`` metrics go into
  ``data.meta_info[METRICS_KEY]``, from where :mod:`verl_rhythm.glue.metric_utils` adds them to the step's metrics.

Each wrapper passes every argument through to the stock function and reads the ones it needs by name; one whose name
or parameters changed in a later verl is left as verl's own and disables rhythm, loudly (:mod:`verl_rhythm.glue.seams`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Iterator

import torch

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue import core_algos as rhythm_algos
from verl_rhythm.glue import seams
from verl_rhythm.glue.checks import ESTIMATOR_NAME, check_rhythm_run, is_rhythm_run
from verl_rhythm.glue.metric_utils import METRICS_KEY
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
from verl_rhythm.glue.tq_fields import ENTROPY, FAI, SEQ_STATS, WAAD
from verl_rhythm.wrapping import is_wrapped, mark

CAPTURED_MASK = "rhythm_response_mask"
"""``(bs, response_length)``: ``response_mask`` as the old-log-prob pass saw it (verl's rejection sampling,
``rollout_corr_helper.compute_rollout_correction_and_add_to_batch``, later zeroes tokens of ``response_mask``)."""
CAPTURE_ROW = "rhythm_capture_row"
"""``(bs, 4)``: :func:`verl_rhythm.glue.statistics.capture_rows` of each row."""
STEP = "rhythm_step"
"""``(bs,)`` int64: ``RayPPOTrainer.global_steps`` when the old-log-prob pass ran (restored from the checkpoint on
resume); the advantage step hands :func:`~verl_rhythm.glue.statistics.draw_step` of it to the estimator."""
WORKER_METHOD = "compute_log_prob"
"""The actor worker group's method the stock ``_compute_old_log_prob`` calls (``ActorRolloutRefWorker``)."""
BATCH_FIELDS = (WAAD, FAI, CAPTURED_MASK, CAPTURE_ROW, STEP)
"""What the old-log-prob pass adds to a rhythm batch (plus ``entropy`` for strategies that need it); all are
popped in the advantage step."""

_KEPT: contextvars.ContextVar[list | None] = contextvars.ContextVar("verl_rhythm_kept_outputs", default=None)


def install(module) -> None:
    """Wrap ``RayPPOTrainer.__init__``, ``RayPPOTrainer._compute_old_log_prob`` and ``compute_advantage`` of
    ``module``; idempotent.

    Each is checked first (:func:`verl_rhythm.glue.seams.mismatch`); one that moved stays verl's own and is recorded
    as disabled. If ``__init__`` moved, ``RayPPOTrainer.init_workers`` (called before any worker exists) gets the
    start-up guard instead (:func:`verl_rhythm.glue.seams.guard`, reading ``self.config``).
    """
    cls = getattr(module, "RayPPOTrainer", None)
    if not isinstance(cls, type):
        seams.record_disabled(f"{module.__name__}.RayPPOTrainer", "not found")
    else:
        for name, wrapper in METHODS.items():
            if not seams.wrap_method(module, "RayPPOTrainer", name, wrapper, **SHAPES[name]) and name == "__init__":
                _guard_init_workers(cls)
    stock_fn = getattr(module, "compute_advantage", None)
    if not is_wrapped(stock_fn) and seams.checked(
        f"{module.__name__}.compute_advantage", stock_fn, **SHAPES["compute_advantage"]
    ):
        module.compute_advantage = seams.wrap(stock_fn, _compute_advantage)
    from verl_rhythm.glue import metric_utils

    metric_utils.rebind(module)


def _guard_init_workers(cls) -> None:
    original = inspect.getattr_static(cls, "init_workers", None)
    if inspect.isfunction(original) and not is_wrapped(original):  # the guard passes every argument through
        cls.init_workers = seams.guard(original, lambda call: is_rhythm_run(getattr(call["self"], "config", None)))


def _init(call: seams.Call):
    if check_rhythm_run(call["config"]) is not None:
        keep_collected_outputs()
    return call.stock()


def keep_collected_outputs() -> None:
    """Wrap the collect function of ``ActorRolloutRefWorker.compute_log_prob``; idempotent.

    ``@register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))`` stores a dict with
    ``dispatch_fn`` and ``collect_fn`` on the method (``verl/single_controller/base/decorator.py``); every worker
    group built afterwards binds that ``collect_fn`` (``WorkerGroup._bind_worker_method``; colocated workers share
    the same dict, ``_bind_workers_method_to_parent``). The wrapper returns the stock result unchanged and, only
    inside :func:`_kept_outputs`, also keeps it. Called from ``RayPPOTrainer.__init__``, before ``init_workers``.

    Raises:
        RhythmDisabled: the method no longer carries a dispatch dict with a ``collect_fn`` (verl changed it; recorded
            as a disabled seam, :mod:`verl_rhythm.glue.seams`).
    """
    from verl.single_controller.base.decorator import MAGIC_ATTR
    from verl.workers.engine_workers import ActorRolloutRefWorker

    method = getattr(ActorRolloutRefWorker, WORKER_METHOD, None)
    mode = (getattr(method, MAGIC_ATTR, None) or {}).get("dispatch_mode")
    if not isinstance(mode, dict) or "collect_fn" not in mode:
        seams.record_disabled(
            f"verl.workers.engine_workers.ActorRolloutRefWorker.{WORKER_METHOD}",
            f"no collect_fn in its registered dispatch mode ({mode!r})",
        )
        seams.refuse()
    stock = mode["collect_fn"]
    if not is_wrapped(stock):
        mode["collect_fn"] = mark(_KeepingCollect(stock), stock)


class _KeepingCollect:
    """verl's collect function, unchanged, that also keeps its result inside :func:`_kept_outputs`.

    A module-level class, not a closure: Ray pickles the dispatch dict holding it with every colocated worker class
    (``verl/single_controller/ray/base.py:create_colocated_worker_cls``), and an instance of an importable class
    pickles by reference, where a closure over the context variable would not pickle at all.
    """

    def __init__(self, stock_fn):
        self.stock_fn = stock_fn
        functools.update_wrapper(self, stock_fn)

    def __call__(self, *args, **kwargs):
        out = self.stock_fn(*args, **kwargs)
        kept = _KEPT.get()
        if kept is not None:
            kept.append(out)
        return out


@contextlib.contextmanager
def _kept_outputs() -> Iterator[list]:
    """What the collect function of ``compute_log_prob`` returns inside this block, in call order."""
    kept: list = []
    token = _KEPT.set(kept)
    try:
        yield kept
    finally:
        _KEPT.reset(token)


def _compute_old_log_prob(call: seams.Call):
    self, batch = call["self"], call["batch"]
    cfg = rhythm_config(self.config)
    if cfg is None:
        return call.stock()
    captured_mask = batch.batch["response_mask"].clone()
    if not cfg.needs_attention:
        old_log_prob, *rest = call.stock()
    else:
        with capture_requested(batch.meta_info, cfg) as timing, _kept_outputs() as kept:
            old_log_prob, *rest = call.stock()
        if not kept:
            raise RhythmCaptureMissing(
                f"algorithm.rhythm.strategy={cfg.strategy!r}: no output of actor_rollout_wg.{WORKER_METHOD} passed "
                "the collect function of ActorRolloutRefWorker.compute_log_prob during "
                "RayPPOTrainer._compute_old_log_prob (a worker group built before RayPPOTrainer.__init__, or a "
                "trainer that does not call the stock step); see verl_rhythm/glue/contract.py"
            )
        fields = padded_statistics(kept[-1], batch, cfg, stage_seconds=timing["seconds"])
        old_log_prob.batch.update(fields)
    old_log_prob.batch[CAPTURED_MASK] = captured_mask
    old_log_prob.batch[STEP] = torch.full((len(captured_mask),), int(self.global_steps), dtype=torch.long)
    if ENTROPY in fetch_fields(cfg):
        old_log_prob.batch[ENTROPY] = old_log_prob.batch["entropys"].clone()
    return (old_log_prob, *rest)


def padded_statistics(output, batch, cfg: RhythmConfig, *, stage_seconds: float) -> dict[str, torch.Tensor]:
    """The engine's outputs of one old-log-prob call as right-padded response-layout fields of ``batch``.

    Args:
        output: the ``TensorDict`` ``actor_rollout_wg.compute_log_prob`` returned: ``rhythm_waad``, ``rhythm_fai``
            nested ``(bs, response_len_i)`` (each response token at its own position), ``rhythm_seq_stats`` nested
            ``(bs, 3)``.
        batch: the ``DataProto`` of the call: ``responses (bs, R)``.
        cfg: the run's config (named in the error).
        stage_seconds: wall time of the old-log-prob call.

    Returns:
        ``rhythm_waad``, ``rhythm_fai`` ``(bs, R)`` float32 (zero past each response) and :data:`CAPTURE_ROW`
        ``(bs, 4)``.

    Raises:
        RhythmCaptureMissing: the outputs lack the capture.
    """
    check_engine_outputs(output.keys(), cfg)
    bs, width = batch.batch["responses"].shape
    fields = {k: torch.nested.to_padded_tensor(output[k].float(), 0.0, output_size=(bs, width)) for k in (WAAD, FAI)}
    fields[CAPTURE_ROW] = capture_rows(output[SEQ_STATS], stage_seconds=stage_seconds)
    return fields


def _compute_advantage(call: seams.Call):
    data, adv_estimator = call["data"], call["adv_estimator"]
    if str(getattr(adv_estimator, "value", adv_estimator)) != ESTIMATOR_NAME or rhythm_algos.in_handoff():
        # the v1 trainer's _compute_advantage calls this function inside its own hand-off (trainer_base)
        return call.stock()
    seams.refuse()
    cfg = RhythmConfig.from_algorithm_config(call["config"])
    fields = fetch_fields(cfg)
    keys = data.batch.keys()
    if CAPTURED_MASK not in keys:
        # not a batch of the legacy trainer's old-log-prob pass: the estimator runs on what verl passes it (and
        # names a statistic it lacks); without a hand-off it draws with step 0 and reports no metrics
        return call.stock()
    missing = [f for f in fields if f not in data.batch.keys()]
    if missing:
        raise RhythmCaptureMissing(
            f"algorithm.rhythm.strategy={cfg.strategy!r}: the batch holds no {missing} for the advantage step "
            "(the old-log-prob pass did not add them: a trainer whose old-log-prob step does not call "
            "RayPPOTrainer._compute_old_log_prob, or algorithm.rollout_correction.bypass_mode=true)"
        )
    mask = data.batch[CAPTURED_MASK]
    with advantage_handoff(cfg, mask, {f: data.batch[f] for f in fields}, step=batch_step(data)) as metrics:
        out = call.stock()
    if CAPTURE_ROW in keys:
        metrics.update(capture_metrics(data.batch[CAPTURE_ROW], mask.bool().any(-1)))
    out.meta_info[METRICS_KEY] = metrics
    ours = [f for f in dict.fromkeys((*BATCH_FIELDS, *fields)) if f in out.batch.keys()]
    out.pop(batch_keys=ours)  # nothing of the capture goes on to the actor update (_update_actor sends the batch)
    return out


def batch_step(data) -> int:
    """The step the estimator gets for ``data``: :func:`~verl_rhythm.glue.statistics.draw_step` of :data:`STEP`.

    Raises:
        RhythmCaptureMissing: ``data`` has no :data:`STEP` (it did not come from ``_compute_old_log_prob``), or its
            rows disagree (rows of different training steps were concatenated).
    """
    if STEP not in data.batch.keys():
        raise RhythmCaptureMissing(
            f"the batch holds no '{STEP}' for the advantage step: it did not come from "
            "RayPPOTrainer._compute_old_log_prob (see verl_rhythm/glue/contract.py)"
        )
    steps = data.batch[STEP].unique()
    if steps.numel() != 1:
        raise RhythmCaptureMissing(f"the batch's '{STEP}' mixes training steps {steps.tolist()}")
    return draw_step(int(steps[0]))


METHODS = {"__init__": _init, "_compute_old_log_prob": _compute_old_log_prob}
"""verl ``RayPPOTrainer`` method → its wrapper (with ``compute_advantage``, the list of what this module wraps)."""
SHAPES = {
    "__init__": {
        "reads": ("config",),
        "known": (
            "config",
            "tokenizer",
            "role_worker_mapping",
            "resource_pool_manager",
            "ray_worker_group_cls",
            "processor",
            "train_dataset",
            "val_dataset",
            "collate_fn",
            "train_sampler",
            "device_name",
        ),
    },
    "_compute_old_log_prob": {"reads": ("batch",), "known": ("batch",)},
    "compute_advantage": {
        "reads": ("data", "adv_estimator", "config"),
        "known": ("data", "adv_estimator", "gamma", "lam", "num_repeat", "norm_adv_by_std_in_grpo", "config"),
    },
}
"""Per wrapped function, the parameters its wrapper reads and verl 0.9.1's parameters (:func:`seams.mismatch`)."""
