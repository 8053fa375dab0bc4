# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl's ``python -m verl.trainer.main_ppo`` with ``actor_rollout_ref.actor.strategy=megatron`` on the CPU backend.

The same run as ``tests/test_main_ppo_on_cpu.py`` (tiny random GQA Llama, arithmetic, the v1 trainer, the ``hf``
rollout, the reward loop, the estimator), with verl's real ``MegatronEngineWithLMHead`` (vanilla mbridge,
megatron-core's local layer spec, TP = PP = 1 on gloo) training the actor and computing the reference's log-probs
(``use_kl_loss``), through the CPU backend's shims (``verl_rhythm/backends/cpu/megatron.py``, its optimizer included)
and the Megatron capture (``verl_rhythm/glue/megatron_impl.py``). The Megatron overrides are the quickstart's
(:func:`verl_rhythm.quickstart.fitted_defaults` for ``actor_rollout_ref.actor.strategy=megatron``). What the actor
was trained on is read back from the batch each update received and checked against verl's GRPO advantage × γ, γ
recomputed here from the WAAD/FAI the Megatron engine captured.

megatron-core and mbridge are not in the main environment: this file runs in the ``megatron`` environment of
``tests/matrix.sh`` and is skipped elsewhere.
"""

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core", reason="megatron-core is installed only in tests/matrix.sh's megatron env")
pytest.importorskip("mbridge", reason="mbridge is installed only in tests/matrix.sh's megatron env")

sys.path.insert(0, str(Path(__file__).parent))
from test_main_ppo_on_cpu import RHYTHM_KEYS, SMALL, assert_grpo_times_gamma, model_and_data  # noqa: E402

from verl_rhythm.quickstart import fitted_defaults  # noqa: E402
from verl_rhythm.testing.main_ppo import run_main_ppo  # noqa: E402

pytestmark = pytest.mark.slow

MEGATRON = [
    "actor_rollout_ref.actor.strategy=megatron",
    "actor_rollout_ref.actor.use_kl_loss=true",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
]


@pytest.fixture(scope="module")
def megatron_run(tmp_path_factory):
    """Two steps of the coupled strategy on verl's Megatron engine (actor and reference)."""
    root, model, data = model_and_data(tmp_path_factory.mktemp("main_ppo_megatron"))
    overrides = [*SMALL, *MEGATRON, "trainer.total_training_steps=2"]
    result = run_main_ppo(root / "megatron", model, data, [*fitted_defaults(overrides), *overrides])
    assert result.returncode == 0, result.log[-6000:]
    return result


def test_the_actor_trains_on_verls_megatron_engine(megatron_run):
    assert megatron_run.engines == {"MegatronEngineWithLMHead"}
    assert megatron_run.steps == [1, 2]
    for step, m in megatron_run.metrics:
        missing = [k for k in RHYTHM_KEYS if k not in m]
        assert not missing, f"step {step} lacks {missing}"
        assert m["rhythm/gamma_mean"] >= 1.0 and m["rhythm/capture_s"] > 0
        # the CPU optimizer stepped: verl reports the gradient norm it returned and the scheduler's learning rate
        assert math.isfinite(m["actor/grad_norm"]) and m["actor/grad_norm"] > 0
        assert m["actor/lr"] > 0
        assert "actor/kl_loss" in m  # the reference's log-probs came from a second Megatron engine


def test_the_megatron_update_trained_on_grpo_advantages_times_gamma(megatron_run):
    assert len(megatron_run.dumps) == 2  # one update per step (ppo_mini_batch_size = the batch)
    assert_grpo_times_gamma(megatron_run.dumps)


def test_the_quickstart_trains_the_embedded_model_on_the_megatron_engine(tmp_path, capsys):
    """``python -m verl_rhythm.quickstart --steps 1 actor_rollout_ref.actor.strategy=megatron``: the embedded
    SmolLM2-135M (30 layers, tied embeddings) through mbridge and the Megatron engine; one step with the rhythm metrics
    on its line (about two minutes on 2 cores)."""
    from verl_rhythm import quickstart
    from verl_rhythm.embedded import EmbeddedModelMissing, gguf_path

    try:
        gguf_path()
    except EmbeddedModelMissing as err:
        pytest.skip(str(err))
    rc = quickstart.main(["--steps", "1", "--out", str(tmp_path), "actor_rollout_ref.actor.strategy=megatron"])
    out = capsys.readouterr().out
    assert rc == 0, out[-4000:]
    assert "Megatron engine" in out
    (line,) = [row for row in out.splitlines() if row.startswith("step 1/1")]
    assert "gamma mean 1." in line and "amplified" in line and "capture" in line
    ((step, metrics),) = quickstart.read_metrics(tmp_path / quickstart.METRICS)
    assert step == 1 and metrics["rhythm/gamma_mean"] >= 1.0 and metrics["rhythm/capture_s"] > 0
