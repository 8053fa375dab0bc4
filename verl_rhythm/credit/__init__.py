"""Credit room: per-token statistics → preplan/anchor sets → per-token γ. Pure torch, no verl import."""

from verl_rhythm.credit.gamma import Credit, apply_gamma, compute_gamma, coupled_sets, top_q_mask, waad_delta

__all__ = ["Credit", "apply_gamma", "compute_gamma", "coupled_sets", "top_q_mask", "waad_delta"]
