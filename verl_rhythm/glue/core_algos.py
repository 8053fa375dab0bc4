# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl.trainer.ppo.core_algos.register_adv_est`` — the ``rhythm`` advantage estimator.

verl 0.9.1, ``verl/trainer/ppo/ray_trainer.py:compute_advantage`` calls a registered (non-GAE, non-GRPO) estimator
with exactly ``token_level_rewards, response_mask, config, index`` (+ ``reward_baselines``) and it reads nothing else
of the batch. The attention statistics therefore arrive as extra keyword arguments (``rhythm_waad``,
``rhythm_fai``, ``entropy``), either passed directly or, inside verl's own advantage code, handed over by the
trainer plumbing (:mod:`verl_rhythm.glue.trainer_base`) through :func:`estimator_inputs`, the same hand-off that
carries the training step in and the ``rhythm/*`` metrics back (nothing is kept in module state). Which statistics a
strategy needs is its registration (:mod:`verl_rhythm.credit.registry`); strategies that need none (``none``,
``random``, ``uniform``) work from the four stock fields.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo import core_algos

from verl_rhythm.config import RhythmConfig
from verl_rhythm.credit import apply_gamma, credit_metrics, rhythm_credit
from verl_rhythm.glue import seams
from verl_rhythm.glue.checks import ESTIMATOR_NAME
from verl_rhythm.glue.tq_fields import STATISTIC_FIELDS

CAPTURE_MISSING = (
    "algorithm.rhythm.strategy={strategy!r} needs the per-token attention statistics '{field}' from the actor's "
    "old-log-prob pass, and the batch has none: the rhythm capture did not run. Check that (1) verl-rhythm is "
    "installed in every Ray worker's environment (the 'verl.plugins' entry point loads it; "
    "VERL_USE_EXTERNAL_PLUGINS must not be 'none'), (2) the actor uses an FSDP engine and the trainer's "
    "old-log-prob step calls verl's, and (3) algorithm.rollout_correction.bypass_mode is false (bypass mode skips "
    "the log-prob pass). "
    "To train without attention, set algorithm.rhythm.strategy=none (plain GRPO)."
)
ENTROPY_MISSING = (
    "algorithm.rhythm.strategy={strategy!r} needs the per-token entropy of the old-log-prob pass and got none (the "
    "trainer plumbing requests it with calculate_entropy=True)"
)


@dataclasses.dataclass
class Handoff:
    """What the trainer plumbing and the estimator exchange around one verl advantage call.

    Attributes:
        response_mask: ``(bs, response_length)``, the mask the statistics are laid out on.
        fields: estimator keyword → ``(bs, response_length)`` statistic (``rhythm_waad``, ``rhythm_fai``,
            ``entropy``).
        step: the training step (verl's ``global_steps``); random draws use ``seed + step``.
        metrics: filled by the estimator: the ``rhythm/*`` metrics of its last call in this block.
    """

    response_mask: torch.Tensor
    fields: dict[str, torch.Tensor]
    step: int = 0
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


_HANDOFF: contextvars.ContextVar[Handoff | None] = contextvars.ContextVar("verl_rhythm_handoff", default=None)


@contextlib.contextmanager
def estimator_inputs(response_mask: torch.Tensor, *, step: int = 0, **fields: torch.Tensor | None) -> Iterator[Handoff]:
    """Hand per-token tensors and the step to the estimator calls made inside this block, and take its metrics back.

    verl passes an estimator only four fields and takes back only the advantages. The trainer plumbing fetches the
    statistics from TransferQueue in the same row order and padding as verl's ``_compute_advantage`` and wraps verl's
    own advantage call in this block; the estimator writes its ``rhythm/*`` metrics into the yielded
    :class:`Handoff`. The estimator uses a field only when the caller did not pass it, and only after checking that
    the mask it was called with is ``response_mask`` or a subset of it (rejection sampling drops tokens in between),
    so rows that do not line up fail loudly instead of scaling the wrong tokens.

    Args:
        response_mask: ``(bs, response_length)``, the mask the statistics are laid out on.
        step: the training step; >= 0.
        **fields: ``rhythm_waad``, ``rhythm_fai``, ``entropy``: ``(bs, response_length)`` or ``None``.

    Yields:
        the :class:`Handoff`; its ``metrics`` are filled once the estimator ran.
    """
    unknown = set(fields) - set(STATISTIC_FIELDS.values())
    if unknown:
        raise TypeError(f"estimator_inputs got unknown fields {sorted(unknown)}")
    handoff = Handoff(response_mask, {k: v for k, v in fields.items() if v is not None}, step=int(step))
    token = _HANDOFF.set(handoff)
    try:
        yield handoff
    finally:
        _HANDOFF.reset(token)


def in_handoff() -> bool:
    """Whether an :func:`estimator_inputs` block is active here (a trainer's glue is already handing over)."""
    return _HANDOFF.get() is not None


def _handoff(response_mask: torch.Tensor) -> Handoff | None:
    """The enclosing :func:`estimator_inputs` block's hand-off, checked against ``response_mask``.

    ``response_mask`` may drop tokens of the captured mask, never add any: verl's rejection sampling
    (``algorithm.rollout_correction.rollout_rs``, ``verl/trainer/ppo/rollout_corr_helper.py:
    compute_rollout_correction_and_add_to_batch``) zeroes rejected tokens between the capture and this call.
    Anything else (another shape, a token the capture never saw) means the rows do not line up.
    """
    handoff = _HANDOFF.get()
    if handoff is None:
        return None
    expected = handoff.response_mask
    if expected.shape != response_mask.shape:
        raise RuntimeError(
            "the rhythm statistics handed over by the trainer are laid out on a response_mask of shape "
            f"{tuple(expected.shape)} that differs from the one the estimator was called with "
            f"({tuple(response_mask.shape)}): verl's advantage code changed which rows or columns it passes; "
            "see verl_rhythm/glue/contract.py"
        )
    extra = response_mask.detach().bool().cpu() & ~expected.detach().bool().cpu()
    if bool(extra.any()):
        row = int(extra.any(-1).nonzero()[0])
        raise RuntimeError(
            f"the response_mask the rhythm estimator was called with marks {int(extra.sum())} token(s) (first in row "
            f"{row}) that the mask of the captured statistics does not: a mask may only drop tokens (rejection "
            "sampling), so the rows do not line up; see verl_rhythm/glue/contract.py"
        )
    return handoff


def check_statistics(cfg: RhythmConfig, given: dict[str, torch.Tensor | None]) -> None:
    """Stop when a statistic the configured strategy needs (its registration says which) did not arrive.

    Args:
        cfg: the run's rhythm settings.
        given: estimator keyword (``rhythm_waad``, ``rhythm_fai``, ``entropy``) → tensor or ``None``.

    Raises:
        ValueError: naming the strategy, the missing field and what to check.
    """
    for stat in cfg.needs:
        field = STATISTIC_FIELDS[stat]
        if given.get(field) is None:
            template = ENTROPY_MISSING if stat == "entropy" else CAPTURE_MISSING
            raise ValueError(template.format(strategy=cfg.strategy, field=field))


def compute_rhythm_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    index: np.ndarray | None = None,
    rhythm_waad: torch.Tensor | None = None,
    rhythm_fai: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    epsilon: float = 1e-6,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantage scaled per token by the rhythm γ (arXiv 2510.13554): Ã_t = A_t · γ_t.

    The base advantage is verl's own :func:`verl.trainer.ppo.core_algos.compute_grpo_outcome_advantage` with
    ``norm_adv_by_std_in_grpo`` read from ``config``; γ comes from :func:`verl_rhythm.credit.compute_gamma` and is
    applied to the advantage signs that ``algorithm.rhythm.sign`` selects. A statistic left ``None`` is taken from an
    enclosing :func:`estimator_inputs` block, if any.

    Args:
        token_level_rewards: ``(bs, response_length)``.
        response_mask: ``(bs, response_length)``.
        config: verl's ``algorithm`` config; knobs under ``config.rhythm`` (see :class:`RhythmConfig`).
        index: ``(bs,)`` group ids (``uid``) of the GRPO groups.
        rhythm_waad: ``(bs, response_length)`` WAAD of each response token at its own position.
        rhythm_fai: ``(bs, response_length)`` FAI of each response token at its own position.
        entropy: ``(bs, response_length)`` token entropy of the old-log-prob pass (strategies that rank by it).
        epsilon: GRPO's std epsilon.

    Returns:
        ``(advantages, returns)``, both ``(bs, response_length)``, equal (as verl's GRPO returns them).

    Raises:
        RhythmDisabled: a seam of the glue moved in this verl (:mod:`verl_rhythm.glue.seams`).
        ValueError: ``config`` or ``index`` missing, or a statistic the strategy needs is missing (the capture did
            not run).
    """
    seams.refuse()
    if config is None:
        raise ValueError(
            "the rhythm estimator needs verl's algorithm config (config=...; ray_trainer.compute_advantage passes it) "
            "and got none: without it, algorithm.rhythm.* is unknown and no strategy is assumed"
        )
    cfg = RhythmConfig.from_algorithm_config(config)
    handoff = _handoff(response_mask)
    pending = {} if handoff is None else handoff.fields
    given = {
        "rhythm_waad": pending.get("rhythm_waad") if rhythm_waad is None else rhythm_waad,
        "rhythm_fai": pending.get("rhythm_fai") if rhythm_fai is None else rhythm_fai,
        "entropy": pending.get("entropy") if entropy is None else entropy,
    }
    if index is None:
        raise ValueError("the rhythm estimator needs the GRPO group ids ('uid', passed as index) and got none")
    check_statistics(cfg, given)
    norm_by_std = bool(config.get("norm_adv_by_std_in_grpo", True))
    advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards,
        response_mask=response_mask,
        index=index,
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_by_std,
    )
    # γ is a property of the generated response: it is computed on the captured mask, and tokens that rejection
    # sampling dropped since then keep the zero advantage verl's GRPO gave them (it multiplies by response_mask)
    captured = response_mask if handoff is None else handoff.response_mask.to(response_mask.device)
    stats = {stat: given[field] for stat, field in STATISTIC_FIELDS.items()}
    credit = rhythm_credit(cfg.credit, captured, **stats, step=0 if handoff is None else handoff.step)
    scaled = apply_gamma(advantages, credit.gamma.to(advantages.device), cfg.sign)
    if handoff is not None:
        handoff.metrics.clear()
        handoff.metrics.update(credit_metrics(credit, response_mask))
        handoff.metrics["rhythm/varied_group_share"] = varied_group_share(token_level_rewards.sum(-1), index)
    return scaled, scaled


GRPO_READS = ("token_level_rewards", "response_mask", "index", "epsilon", "norm_adv_by_std_in_grpo")
"""The keywords the estimator passes to verl's ``compute_grpo_outcome_advantage``."""
GRPO_KNOWN = (*GRPO_READS, "config")
"""verl 0.9.1's parameters of ``compute_grpo_outcome_advantage`` (:func:`verl_rhythm.glue.seams.mismatch`)."""


def register(module=core_algos) -> bool:
    """Register :func:`compute_rhythm_outcome_advantage` as ``rhythm`` with ``module.register_adv_est``; whether it is.

    Checked first: ``register_adv_est`` takes the name as its one required parameter, and the GRPO function the
    estimator builds on takes the keywords it passes. Either moved: ``rhythm`` is not registered, both stay verl's own,
    the seam is recorded as disabled (one WARNING line), and a run asking for ``rhythm`` is refused at start-up (and
    by verl itself, ``get_adv_estimator_fn``: ``Unknown advantage estimator``); every other run is untouched.
    """
    name = module.__name__
    register_fn = getattr(module, "register_adv_est", None)
    grpo = getattr(module, "compute_grpo_outcome_advantage", None)
    # checked one after the other: each seam that moved is recorded
    ok = seams.checked(f"{name}.register_adv_est", register_fn, known=("name_or_enum",))
    ok = seams.checked(f"{name}.compute_grpo_outcome_advantage", grpo, reads=GRPO_READS, known=GRPO_KNOWN) and ok
    if ok:
        register_fn(ESTIMATOR_NAME)(compute_rhythm_outcome_advantage)
    return ok


def varied_group_share(scores: torch.Tensor, index: np.ndarray) -> float:
    """Share of GRPO groups whose responses got different rewards: only those have a non-zero advantage, so only
    there can γ change the update.

    Args:
        scores: ``(bs,)`` sequence rewards.
        index: ``(bs,)`` group ids.
    """
    groups: dict = {}
    for gid, score in zip(index.tolist() if hasattr(index, "tolist") else index, scores.tolist(), strict=True):
        groups.setdefault(gid, set()).add(score)
    return sum(len(v) > 1 for v in groups.values()) / max(len(groups), 1)


register()
