"""Seam: ``verl.trainer.ppo.core_algos.register_adv_est`` — the ``rhythm`` advantage estimator.

verl 0.9.1, ``verl/trainer/ppo/ray_trainer.py:compute_advantage`` calls a registered (non-GAE, non-GRPO) estimator
with exactly ``token_level_rewards, response_mask, config, index`` (+ ``reward_baselines``) and it reads nothing else
of the batch. The attention statistics therefore arrive as extra keyword arguments (``rhythm_waad``,
``rhythm_fai``, ``entropy``) passed by the trainer plumbing of this plugin; strategies that need none of them
(``none``, ``random``, ``uniform``) work from the four stock fields.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo import core_algos

from verl_rhythm.config import RhythmConfig
from verl_rhythm.credit import Credit, apply_gamma, compute_gamma

ESTIMATOR_NAME = "rhythm"

CAPTURE_MISSING = (
    "algorithm.rhythm.strategy={strategy!r} needs the per-token attention statistics '{field}' from the actor's "
    "old-log-prob pass, and the batch has none: the rhythm capture did not run. Check that (1) verl-rhythm is "
    "installed in every Ray worker's environment (the 'verl.plugins' entry point loads it; "
    "VERL_USE_EXTERNAL_PLUGINS must not be 'none'), (2) the run uses the v1 trainer (trainer.use_v1=true) with the "
    "FSDP engine, and (3) algorithm.rollout_correction.bypass_mode is false (bypass mode skips the log-prob pass). "
    "To train without attention, set algorithm.rhythm.strategy=none (plain GRPO)."
)

_call_counter = itertools.count()
last_metrics: dict[str, float] = {}
"""Metrics of the most recent estimator call (``rhythm/...`` keys); the trainer plumbing copies them into the
step's metrics dict. A module attribute because verl gives an estimator no way to return metrics."""


@core_algos.register_adv_est(ESTIMATOR_NAME)
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
    applied to the advantage signs that ``algorithm.rhythm.sign`` selects.

    Args:
        token_level_rewards: ``(bs, response_length)``.
        response_mask: ``(bs, response_length)``.
        config: verl's ``algorithm`` config; knobs under ``config.rhythm`` (see :class:`RhythmConfig`).
        index: ``(bs,)`` group ids (``uid``) of the GRPO groups.
        rhythm_waad: ``(bs, response_length)`` WAAD of each response token at its own position.
        rhythm_fai: ``(bs, response_length)`` FAI of each response token at its own position.
        entropy: ``(bs, response_length)`` token entropy of the old-log-prob pass (``entropy`` control only).
        epsilon: GRPO's std epsilon.

    Returns:
        ``(advantages, returns)``, both ``(bs, response_length)``, equal (as verl's GRPO returns them).

    Raises:
        ValueError: ``index`` missing, or a statistic the strategy needs is missing (the capture did not run).
    """
    cfg = RhythmConfig.from_algorithm_config(config)
    if index is None:
        raise ValueError("the rhythm estimator needs the GRPO group ids ('uid', passed as index) and got none")
    norm_by_std = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
    advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards,
        response_mask=response_mask,
        index=index,
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_by_std,
    )
    credit = rhythm_credit(cfg, response_mask, waad=rhythm_waad, fai=rhythm_fai, entropy=entropy)
    scaled = apply_gamma(advantages, credit.gamma.to(advantages.device), cfg.sign)
    last_metrics.clear()
    last_metrics.update(credit_metrics(credit, response_mask, cfg))
    return scaled, scaled


def rhythm_credit(
    cfg: RhythmConfig,
    response_mask: torch.Tensor,
    waad: torch.Tensor | None = None,
    fai: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> Credit:
    """γ for a batch under ``cfg``, with the missing-capture check and the ``random`` control's seeding.

    The ``random`` control draws from ``torch.Generator().manual_seed(cfg.seed + i)`` on the i-th call in this
    process, so a run is reproducible from its seed and the picked tokens differ from step to step.
    """
    needs = {
        "coupled": ("rhythm_waad", "rhythm_fai"),
        "local": ("rhythm_waad",),
        "global": ("rhythm_fai",),
        "bottom": ("rhythm_waad",) if cfg.bottom_score == "local" else ("rhythm_fai",),
        "entropy": ("entropy",),
    }.get(cfg.strategy, ())
    given = {"rhythm_waad": waad, "rhythm_fai": fai, "entropy": entropy}
    for field in needs:
        if given[field] is None:
            if field == "entropy":
                raise ValueError(
                    "algorithm.rhythm.strategy='entropy' needs the per-token entropy of the old-log-prob pass "
                    "and got none (the trainer plumbing requests it with calculate_entropy=True)"
                )
            raise ValueError(CAPTURE_MISSING.format(strategy=cfg.strategy, field=field))
    generator = None
    if cfg.strategy == "random":
        generator = torch.Generator().manual_seed(cfg.seed + next(_call_counter))
    device = response_mask.device
    return compute_gamma(
        cfg.strategy,
        response_mask,
        waad=None if waad is None else waad.to(device),
        fai=None if fai is None else fai.to(device),
        entropy=None if entropy is None else entropy.to(device),
        top_q=cfg.top_q,
        gamma_amp=cfg.gamma_amp,
        alpha=cfg.alpha,
        intro_window=cfg.intro_window,
        bottom_score=cfg.bottom_score,
        generator=generator,
    )


def credit_metrics(credit: Credit, response_mask: torch.Tensor, cfg: RhythmConfig) -> dict[str, float]:
    """``rhythm/*`` scalars of one batch: share of amplified tokens, mean γ, |D| and |I(D)| per response."""
    mask = response_mask.bool()
    n_tok = max(int(mask.sum()), 1)
    n_seq = max(int(mask.any(-1).sum()), 1)
    g = credit.gamma.float()
    return {
        "rhythm/amplified_share": float(((g > 1.0) & mask).sum()) / n_tok,
        "rhythm/gamma_mean": float((g * mask).sum()) / n_tok,
        "rhythm/gamma_max": float(g[mask].max()) if mask.any() else 1.0,
        "rhythm/anchor_share": float(credit.anchor.sum()) / n_tok,
        "rhythm/preplan_share": float(credit.preplan.sum()) / n_tok,
        "rhythm/dominated_per_response": float(credit.dominated.sum()) / n_seq,
        "rhythm/intro_per_response": float((credit.intro > 0).sum()) / n_seq,
    }
