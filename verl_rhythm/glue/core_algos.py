"""Seam: ``verl.trainer.ppo.core_algos.register_adv_est`` — the ``rhythm`` advantage estimator.

verl 0.9.1, ``verl/trainer/ppo/ray_trainer.py:compute_advantage`` calls a registered (non-GAE, non-GRPO) estimator
with exactly ``token_level_rewards, response_mask, config, index`` (+ ``reward_baselines``) and it reads nothing else
of the batch. The attention statistics therefore arrive as extra keyword arguments (``rhythm_waad``,
``rhythm_fai``, ``entropy``), either passed directly or, inside verl's own advantage code, handed over by the
trainer plumbing (:mod:`verl_rhythm.glue.trainer_base`) through :func:`estimator_inputs`; strategies that need none
of them (``none``, ``random``, ``uniform``) work from the four stock fields.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
from collections.abc import Iterator
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

_PENDING_INPUTS: contextvars.ContextVar[dict[str, torch.Tensor] | None] = contextvars.ContextVar(
    "verl_rhythm_estimator_inputs", default=None
)


@contextlib.contextmanager
def estimator_inputs(response_mask: torch.Tensor, **fields: torch.Tensor | None) -> Iterator[None]:
    """Hand per-token tensors to the estimator calls made inside this block (verl passes only four fields).

    The trainer plumbing fetches the statistics from TransferQueue in the same row order and padding as verl's
    ``_compute_advantage`` and wraps verl's own advantage call in this block. The estimator uses a field only when
    the caller did not pass it, and only after checking that the mask it was called with is ``response_mask`` or a
    subset of it (rejection sampling drops tokens in between), so rows that do not line up fail loudly instead of
    scaling the wrong tokens.

    Args:
        response_mask: ``(bs, response_length)``, the mask the statistics are laid out on.
        **fields: ``rhythm_waad``, ``rhythm_fai``, ``entropy``: ``(bs, response_length)`` or ``None``.
    """
    unknown = set(fields) - {"rhythm_waad", "rhythm_fai", "entropy"}
    if unknown:
        raise TypeError(f"estimator_inputs got unknown fields {sorted(unknown)}")
    token = _PENDING_INPUTS.set({"response_mask": response_mask, **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _PENDING_INPUTS.reset(token)


def _pending_inputs(response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The statistics of the enclosing :func:`estimator_inputs` block, checked against ``response_mask``.

    ``response_mask`` may drop tokens of the captured mask, never add any: verl's rejection sampling
    (``algorithm.rollout_correction.rollout_rs``, ``verl/trainer/ppo/rollout_corr_helper.py:
    compute_rollout_correction_and_add_to_batch``) zeroes rejected tokens between the capture and this call.
    Anything else (another shape, a token the capture never saw) means the rows do not line up.
    """
    pending = _PENDING_INPUTS.get()
    if pending is None:
        return {}
    expected = pending["response_mask"]
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
    return pending


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
    applied to the advantage signs that ``algorithm.rhythm.sign`` selects. A statistic left ``None`` is taken from an
    enclosing :func:`estimator_inputs` block, if any.

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
    pending = _pending_inputs(response_mask)
    rhythm_waad = pending.get("rhythm_waad") if rhythm_waad is None else rhythm_waad
    rhythm_fai = pending.get("rhythm_fai") if rhythm_fai is None else rhythm_fai
    entropy = pending.get("entropy") if entropy is None else entropy
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
    # γ is a property of the generated response: it is computed on the captured mask, and tokens that rejection
    # sampling dropped since then keep the zero advantage verl's GRPO gave them (it multiplies by response_mask)
    captured = pending.get("response_mask", response_mask).to(response_mask.device)
    credit = rhythm_credit(cfg, captured, waad=rhythm_waad, fai=rhythm_fai, entropy=entropy)
    scaled = apply_gamma(advantages, credit.gamma.to(advantages.device), cfg.sign)
    last_metrics.clear()
    last_metrics.update(credit_metrics(credit, response_mask, cfg))
    last_metrics["rhythm/varied_group_share"] = varied_group_share(token_level_rewards.sum(-1), index)
    return scaled, scaled


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
    """``rhythm/*`` scalars of one batch: share of amplified tokens, mean γ, |D| and |I(D)| per response, over the
    tokens of ``response_mask`` (the trained ones)."""
    mask = response_mask.bool().to(credit.gamma.device)
    n_tok = max(int(mask.sum()), 1)
    n_seq = max(int(mask.any(-1).sum()), 1)
    g = credit.gamma.float()
    return {
        "rhythm/amplified_share": float(((g > 1.0) & mask).sum()) / n_tok,
        "rhythm/gamma_mean": float((g * mask).sum()) / n_tok,
        "rhythm/gamma_max": float(g[mask].max()) if mask.any() else 1.0,
        "rhythm/anchor_share": float((credit.anchor & mask).sum()) / n_tok,
        "rhythm/preplan_share": float((credit.preplan & mask).sum()) / n_tok,
        "rhythm/dominated_per_response": float((credit.dominated & mask).sum()) / n_seq,
        "rhythm/intro_per_response": float(((credit.intro > 0) & mask).sum()) / n_seq,
    }
