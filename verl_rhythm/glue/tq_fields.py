# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The names the glue adds to verl's batches: one non-tensor switch, the engine's outputs, the response-layout fields.

No verl or torch import, so both sides (trainer in the TaskRunner, engine in the workers) share them cheaply.

Flow of one step (verl 0.9.1, v1 trainer):

1. ``PPOTrainer._compute_old_log_prob`` puts :data:`CAPTURE_KEY` (the JSON of the run's capture settings) into
   ``batch.extra_info``; verl's ``tqbridge`` hands ``extra_info`` to the worker as non-tensor data of the TensorDict,
   and the engine's micro-batches carry it. It is removed again right after that call, so the reference pass, the
   actor update and everything else never see it.
2. The engine's forward step, seeing the key, captures and returns :data:`WAAD_FULL`, :data:`FAI_FULL` (nested
   ``(bsz, prompt + response)``, like ``log_probs``) and :data:`SEQ_STATS` (nested ``(bsz, 3)``); ``tqbridge`` writes
   every tensor output to TransferQueue.
3. The trainer slices them to the response layout, each token at its own position, as :data:`WAAD` and :data:`FAI`
   (nested ``(bsz, response)``, like ``old_log_probs``), which the advantage step hands to the estimator.
"""

CAPTURE_KEY = "rhythm_capture"
"""Non-tensor key (``batch.extra_info`` → micro-batch) carrying :func:`capture_request` of the run's config."""


def capture_request(cfg) -> str:
    """The value of :data:`CAPTURE_KEY` for a run's ``RhythmConfig``: its capture settings as JSON
    (``cfg.capture.to_json()``; the workers rebuild them with ``CaptureSettings.from_json``). Nothing of the credit
    settings goes to the workers, so a strategy registered only in the driver works."""
    return cfg.capture.to_json()


WAAD_FULL = "rhythm_waad_full"
FAI_FULL = "rhythm_fai_full"
SEQ_STATS = "rhythm_seq_stats"
SEQ_STATS_COLUMNS = ("span_local", "span_global", "capture_s")
"""Columns of :data:`SEQ_STATS`: mean span of the sequence's local heads, of its global heads, and its share of the
micro-batch's capture seconds (split by sequence length; the sum over a batch is the capture time of all ranks)."""

WAAD = "rhythm_waad"
FAI = "rhythm_fai"
ENTROPY = "entropy"
"""verl's own response-layout entropy of the old-log-prob pass (``_compute_old_log_prob`` writes it)."""

ENGINE_OUTPUTS = (WAAD_FULL, FAI_FULL, SEQ_STATS)

STATISTIC_FIELDS = {"waad": WAAD, "fai": FAI, "entropy": ENTROPY}
"""Registry statistic (:data:`verl_rhythm.credit.registry.STATISTICS`) → its response-layout field in the batch,
which is also the rhythm estimator's keyword argument."""
