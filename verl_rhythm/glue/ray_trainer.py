# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/trainer/ppo/ray_trainer.py`` (verl 0.9.1), the legacy trainer ``RayPPOTrainer`` and its advantage step.

The ``DataProto`` half of the trainer glue (``trainer.use_v1=false``, ``main_ppo_v0``, and every recipe trainer that
subclasses ``RayPPOTrainer``, e.g. the DAPO recipe's); what every trainer shares is
:mod:`verl_rhythm.glue.statistics`. The batch lives in the driver, so the statistics ride in it as response-layout
fields, row-aligned through any reordering, filtering or concatenation a recipe's ``fit`` does between the passes.
Wrapped (never copied); a run whose ``algorithm.adv_estimator`` is not ``rhythm`` goes straight to the stock code:

- ``RayPPOTrainer.__init__``: :func:`verl_rhythm.glue.checks.check_rhythm_run` first (the legacy trainer has no
  ``init``; its workers start in ``init_workers``, after the constructor).
- ``RayPPOTrainer._compute_old_log_prob(batch)``: for strategies that read attention, the capture key rides in
  ``batch.meta_info`` for exactly this call (``DataProto.to_tensordict`` makes ``meta_info`` the non-tensor data of
  the worker's ``TensorDict``); the stock method reads only ``log_probs``/``entropy`` of the TensorDict that
  ``actor_rollout_wg.compute_log_prob`` returns, so that one call's return value is kept as well, and the engine's
  outputs are sliced to the response layout (each token at its own position, right-padded like
  ``no_padding_2_padding``) into the returned ``DataProto``, which ``fit`` unions into the batch:
  ``rhythm_waad``, ``rhythm_fai``, :data:`CAPTURED_MASK` (the mask the statistics sit on, before rejection sampling
  edits ``response_mask``) and :data:`CAPTURE_ROW` (per-row capture statistics); ``entropy`` for strategies that
  rank by it (the stock ``fit`` drops ``entropys`` before the union).
- ``compute_advantage(data, adv_estimator, ...)`` (module function; ``fit`` and recipes such as the DAPO recipe
  import it from this module): the fields are handed to the estimator around the stock call
  (:func:`~verl_rhythm.glue.statistics.advantage_handoff`) and the ``rhythm/*`` metrics go into
  ``data.meta_info[METRICS_KEY]``, from where :mod:`verl_rhythm.glue.metric_utils` adds them to the step's metrics.

Each wrapper passes every argument through to the stock function and reads the ones it needs by name; one whose name
or parameters changed in a later verl is left as verl's own and disables rhythm, loudly (:mod:`verl_rhythm.glue.seams`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Iterator

import torch

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue import core_algos as rhythm_algos
from verl_rhythm.glue import seams
from verl_rhythm.glue.checks import ESTIMATOR_NAME, check_rhythm_run
from verl_rhythm.glue.metric_utils import METRICS_KEY
from verl_rhythm.glue.statistics import (
    RhythmCaptureMissing,
    advantage_handoff,
    capture_metrics,
    capture_requested,
    capture_rows,
    check_engine_outputs,
    fetch_fields,
    nested_rows,
    response_statistics,
    rhythm_config,
)
from verl_rhythm.glue.tq_fields import ENTROPY, SEQ_STATS
from verl_rhythm.wrapping import is_wrapped

CAPTURED_MASK = "rhythm_response_mask"
"""``(bs, response_length)``: ``response_mask`` as the old-log-prob pass saw it (verl's rejection sampling,
``rollout_corr_helper.compute_rollout_correction_and_add_to_batch``, later zeroes tokens of ``response_mask``)."""
CAPTURE_ROW = "rhythm_capture_row"
"""``(bs, 4)``: :func:`verl_rhythm.glue.statistics.capture_rows` of each row."""
WORKER_METHOD = "compute_log_prob"
"""The actor worker group's method the stock ``_compute_old_log_prob`` calls (``ActorRolloutRefWorker``)."""

_trainer: weakref.ReferenceType | None = None
"""The rhythm ``RayPPOTrainer`` constructed last in this process (a TaskRunner builds one): its ``global_steps`` is
the training step the advantage step hands to the estimator (``compute_advantage`` is a module function)."""


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
            original = inspect.getattr_static(cls, name, None)
            if is_wrapped(original):
                continue
            if seams.checked(f"{module.__name__}.RayPPOTrainer.{name}", original, method=True, **SHAPES[name]):
                setattr(cls, name, seams.wrap(original, wrapper))
            elif name == "__init__":
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
        cls.init_workers = seams.guard(original, lambda call: getattr(call["self"], "config", None))


def _init(call: seams.Call):
    global _trainer
    if check_rhythm_run(call["config"]) is not None:
        _trainer = weakref.ref(call["self"])
    return call.stock()


def _compute_old_log_prob(call: seams.Call):
    self, batch = call["self"], call["batch"]
    cfg = rhythm_config(self.config)
    if cfg is None:
        return call.stock()
    captured_mask = batch.batch["response_mask"].clone()
    if not cfg.needs_attention:
        old_log_prob, *rest = call.stock()
    else:
        actor = self.actor_rollout_wg
        with capture_requested(batch.meta_info, cfg) as timing, _intercepted(actor, WORKER_METHOD) as kept:
            old_log_prob, *rest = call.stock()
        if not kept:
            raise RhythmCaptureMissing(
                f"algorithm.rhythm.strategy={cfg.strategy!r}: RayPPOTrainer._compute_old_log_prob never called "
                f"actor_rollout_wg.{WORKER_METHOD}; see verl_rhythm/glue/contract.py"
            )
        world_size = int(getattr(self.actor_rollout_wg, "world_size", 1) or 1)
        fields = padded_statistics(kept[-1], batch, cfg, world_size=world_size, stage_seconds=timing["seconds"])
        old_log_prob.batch.update(fields)
    old_log_prob.batch[CAPTURED_MASK] = captured_mask
    if ENTROPY in fetch_fields(cfg):
        old_log_prob.batch[ENTROPY] = old_log_prob.batch["entropys"].clone()
    return (old_log_prob, *rest)


@contextlib.contextmanager
def _intercepted(worker_group, name: str) -> Iterator[list]:
    """Inside this block, ``worker_group.<name>(data)`` gets ``data`` with a nested ``response_mask``
    (:func:`nested_response_mask`) and what it returns is kept (verl binds worker methods on the instance)."""
    stock = getattr(worker_group, name)
    own = name in vars(worker_group)
    kept: list = []

    @functools.wraps(stock)
    def call(data, *args, **kwargs):
        out = stock(nested_response_mask(data), *args, **kwargs)
        kept.append(out)
        return out

    setattr(worker_group, name, call)
    try:
        yield kept
    finally:
        if own:
            setattr(worker_group, name, stock)
        else:
            delattr(worker_group, name)


def nested_response_mask(data):
    """``data`` (the ``TensorDict`` of ``left_right_2_no_padding``) with ``response_mask`` as nested ``(bs, r_i)``.

    The engine's capture reads each sequence's response as the last ``r_i`` of its ``L_i`` tokens from a nested
    ``response_mask``, the layout of v1 batches. The legacy trainer keeps ``response_mask`` right-padded
    ``(bs, R)``; row i's response is its ``attention_mask`` tokens after the ``P`` prompt columns (the rule of verl's
    ``no_padding_2_padding``). Nothing else in the log-prob pass reads ``response_mask`` (its loss mask is
    ``loss_mask``); the trainer's own copy of the batch is untouched.

    Args:
        data: ``TensorDict`` with ``prompts (bs, P)``, ``attention_mask (bs, P + R)``, ``response_mask (bs, R)``.
    """
    mask = data["response_mask"]
    if mask.is_nested:
        return data
    prompt_width = data["prompts"].shape[1]
    lengths = data["attention_mask"][:, prompt_width:].sum(-1).tolist()
    data["response_mask"] = torch.nested.as_nested_tensor(
        [row[:n] for row, n in zip(mask, lengths, strict=True)], layout=torch.jagged
    )
    return data


def padded_statistics(
    output, batch, cfg: RhythmConfig, *, world_size: int, stage_seconds: float
) -> dict[str, torch.Tensor]:
    """The engine's outputs of one old-log-prob call as right-padded response-layout fields of ``batch``.

    Args:
        output: the ``TensorDict`` ``actor_rollout_wg.compute_log_prob`` returned: ``rhythm_waad_full``,
            ``rhythm_fai_full`` nested ``(bs, prompt_len_i + response_len_i)`` (valid tokens only, the rows of
            ``left_right_2_no_padding``), ``rhythm_seq_stats`` nested ``(bs, 3)``.
        batch: the ``DataProto`` of the call: ``prompts (bs, P)``, ``responses (bs, R)``, ``attention_mask
            (bs, P + R)``.
        cfg: the run's config (named in the error).
        world_size: number of actor ranks.
        stage_seconds: wall time of the old-log-prob call.

    Returns:
        ``rhythm_waad``, ``rhythm_fai`` ``(bs, R)`` float32 (zero past each response) and :data:`CAPTURE_ROW`
        ``(bs, 4)``.

    Raises:
        RhythmCaptureMissing: the outputs lack the capture.
    """
    check_engine_outputs(output.keys(), cfg)
    prompt_width = batch.batch["prompts"].shape[1]
    bs, width = batch.batch["responses"].shape
    # verl's no_padding_2_padding: a row's response is the attention-mask tokens after the prompt columns
    response_lens = batch.batch["attention_mask"][:, prompt_width:].sum(-1)
    stats = response_statistics(output, nested_rows(response_lens))
    fields = {k: torch.nested.to_padded_tensor(v.float(), 0.0, output_size=(bs, width)) for k, v in stats.items()}
    fields[CAPTURE_ROW] = capture_rows(output[SEQ_STATS], world_size=world_size, stage_seconds=stage_seconds)
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
    if fields and CAPTURED_MASK not in keys:
        # not a batch of the legacy trainer's old-log-prob pass: the estimator names what it lacks
        return call.stock()
    missing = [f for f in fields if f not in data.batch.keys()]
    if missing:
        raise RhythmCaptureMissing(
            f"algorithm.rhythm.strategy={cfg.strategy!r}: the batch holds no {missing} for the advantage step "
            "(the old-log-prob pass did not add them: a trainer whose old-log-prob step does not call "
            "RayPPOTrainer._compute_old_log_prob, or algorithm.rollout_correction.bypass_mode=true)"
        )
    mask = data.batch[CAPTURED_MASK] if CAPTURED_MASK in keys else data.batch["response_mask"]
    with advantage_handoff(cfg, mask, {f: data.batch[f] for f in fields}, step=_step()) as metrics:
        out = call.stock()
    if CAPTURE_ROW in keys:
        metrics.update(capture_metrics(data.batch[CAPTURE_ROW], mask.bool().any(-1)))
    out.meta_info[METRICS_KEY] = metrics
    return out


def _step() -> int:
    trainer = _trainer() if _trainer is not None else None
    return int(getattr(trainer, "global_steps", 0) or 0)


METHODS = {"__init__": _init, "_compute_old_log_prob": _compute_old_log_prob}
"""verl ``RayPPOTrainer`` method → its wrapper (with ``compute_advantage``, the list of what this module wraps)."""
SHAPES = {
    "__init__": {
        "reads": ("config",),
        "known": (
            "config", "tokenizer", "role_worker_mapping", "resource_pool_manager", "ray_worker_group_cls", "processor",
            "train_dataset", "val_dataset", "collate_fn", "train_sampler", "device_name",
        ),
    },
    "_compute_old_log_prob": {"reads": ("batch",), "known": ("batch",)},
    "compute_advantage": {
        "reads": ("data", "adv_estimator", "config"),
        "known": ("data", "adv_estimator", "gamma", "lam", "num_repeat", "norm_adv_by_std_in_grpo", "config"),
    },
}
"""Per wrapped function, the parameters its wrapper reads and verl 0.9.1's parameters (:func:`seams.mismatch`)."""
