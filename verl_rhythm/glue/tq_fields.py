# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The names the glue adds to verl's batches: one non-tensor switch, the engine's outputs, the response-layout fields.

No verl or torch import, so both sides (trainer in the TaskRunner, engine in the workers) share them cheaply.

Flow of one step (verl 0.9.1, v1 trainer):

1. ``PPOTrainer._compute_old_log_prob`` puts :data:`CAPTURE_KEY` (the JSON of the run's capture settings) into
   ``batch.extra_info``; verl's ``tqbridge`` hands ``extra_info`` to the worker as non-tensor data of the TensorDict,
   and the engine's micro-batches carry it. It is removed again right after that call, so the reference pass, the
   actor update and everything else never see it.
2. The engine's forward step, seeing the key, captures and returns :data:`WAAD` and :data:`FAI` already sliced to
   the response layout in the worker, each response token at its own position (nested ``(bsz, response_len_i)``,
   like ``old_log_probs``), and :data:`SEQ_STATS` (nested ``(bsz, 3)``); ``tqbridge`` writes every tensor output to
   TransferQueue. The trainer reads only :data:`SEQ_STATS` (for the metrics) at this point.
3. The advantage step fetches :data:`WAAD` and :data:`FAI` and hands them to the estimator; the batch it returns
   no longer lists any of :data:`RHYTHM_FIELDS`, so the actor update never fetches them.
"""

CAPTURE_KEY = "rhythm_capture"
"""Non-tensor key (``batch.extra_info`` → micro-batch) carrying :func:`capture_request` of the run's config."""


def capture_request(cfg) -> str:
    """The value of :data:`CAPTURE_KEY` for a run's ``RhythmConfig``: its capture settings as JSON
    (``cfg.capture.to_json()``; the workers rebuild them with ``CaptureSettings.from_json``). Nothing of the credit
    settings goes to the workers, so a strategy registered only in the driver works."""
    return cfg.capture.to_json()


SEQ_STATS = "rhythm_seq_stats"
SEQ_STATS_COLUMNS = ("span_local", "span_global", "capture_s")
"""Columns of :data:`SEQ_STATS`: mean span of the sequence's local heads, of its global heads, and its share of the
micro-batch's capture seconds (split by sequence length) divided by the data-parallel size: verl returns the
outputs of one rank per data-parallel group, so the sum over a batch is the mean capture time of a rank."""

WAAD = "rhythm_waad"
FAI = "rhythm_fai"
ENTROPY = "entropy"
"""verl's own response-layout entropy of the old-log-prob pass (``_compute_old_log_prob`` writes it)."""

ENGINE_OUTPUTS = (WAAD, FAI, SEQ_STATS)
"""What the engine adds to the old-log-prob outputs: WAAD and FAI nested ``(bsz, response_len_i)``, each response
token at its own position, and the per-sequence :data:`SEQ_STATS`."""
RHYTHM_FIELDS = ENGINE_OUTPUTS
"""Every per-sample field the glue adds to a v1 batch: none of them goes past the advantage step."""

STATISTIC_FIELDS = {"waad": WAAD, "fai": FAI, "entropy": ENTROPY}
"""Registry statistic (:data:`verl_rhythm.credit.registry.STATISTICS`) → its response-layout field in the batch,
which is also the rhythm estimator's keyword argument."""
