# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A drifted verl never breaks a run that does not use rhythm (``verl_rhythm/glue/seams.py``).

Each fixture copies the installed verl package to a temporary folder, edits the copy on disk the way a later 0.9.x
release could (a wrapped method renamed, a parameter added) and sets its version to 0.9.2; each probe is a fresh
Python process with that copy first on ``PYTHONPATH`` (the ``verl.plugins`` entry point loads this worktree's
plugin, as in a user's run). In it, verl's modules import, the moved functions are verl's own, a non-rhythm call
runs verl's code, and a rhythm config stops at start-up with one line naming verl's version and the function.
Stubbed: only the trainer's ``_setup`` / ``on_init_end`` (they start Ray workers), to see that the stock ``init`` ran.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.9.2"
LINE_END = "algorithm.adv_estimator=rhythm cannot run (every other estimator runs verl's own code)"

TRAINER_BASE = "verl/trainer/ppo/v1/trainer_base.py"
RAY_TRAINER = "verl/trainer/ppo/ray_trainer.py"
ENGINE = "verl/workers/engine/fsdp/transformer_impl.py"
FSDP_FORWARD_STEP = (
    "    def forward_step(self, micro_batch: TensorDict, loss_function, forward_only):\n"
    "        device_name = get_device_name()\n"
)


def drifted_verl(tmp_path_factory, name: str, edits: dict[str, list[tuple[str, str, int]]]) -> Path:
    """A copy of the installed verl under a new folder, with ``edits``: file → [(old, new, expected count)]."""
    source = Path(importlib.util.find_spec("verl").submodule_search_locations[0])
    root = tmp_path_factory.mktemp(name)
    shutil.copytree(source, root / "verl", ignore=shutil.ignore_patterns("__pycache__"))
    for rel, subs in edits.items():
        path = root / rel
        text = path.read_text()
        for old, new, count in subs:
            assert text.count(old) == count, f"{rel}: expected {count} of {old!r} in verl's source"
            text = text.replace(old, new)
        path.write_text(text)
    (root / "verl" / "version" / "version").write_text(VERSION + "\n")
    return root


def probe(root: Path, body: str) -> tuple[dict, str]:
    """Run ``PRELUDE + body`` in a fresh process on the verl copy at ``root``; its last stdout line (JSON) and
    its stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(ROOT)])
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PRELUDE + body], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


PRELUDE = r'''
import json, os
import numpy as np
import torch
import verl
from hydra import compose, initialize_config_dir
from verl import DataProto
from verl.trainer import main_ppo
import verl.trainer.ppo.core_algos as core_algos
import verl.trainer.ppo.metric_utils as metric_utils
import verl.trainer.ppo.ray_trainer as ray_trainer
import verl.trainer.ppo.v1.trainer_base as trainer_base
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.workers.engine.fsdp import transformer_impl

from verl_rhythm.glue import plugin, seams
from verl_rhythm.glue.checks import check_rhythm_run
from verl_rhythm.wrapping import is_wrapped

assert verl.__file__.startswith(os.environ["PYTHONPATH"].split(os.pathsep)[0]), verl.__file__
seen = {"imported": seams.disabled()}


def config(*overrides):
    """verl's own ppo_trainer config (of this verl copy), composed as main_ppo does."""
    config_dir = os.path.join(os.path.dirname(main_ppo.__file__), "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


GRPO = config("algorithm.adv_estimator=grpo")
RHYTHM = config(
    "algorithm.adv_estimator=rhythm",
    "actor_rollout_ref.rollout.n=4",
    "+algorithm.rhythm.strategy=none",
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",  # no flash_attn here
)


def batch():
    """Two GRPO groups of two responses (3 response tokens), rewards on the last token."""
    rewards = torch.zeros(4, 3)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 0.5, 2.0])
    mask = torch.ones(4, 3)
    mask[1, 2] = 0
    return DataProto.from_single_dict(
        {"token_level_rewards": rewards, "response_mask": mask, "uid": np.array(["a", "a", "b", "b"], dtype=object)}
    )


def rhythm_batch():
    """:func:`batch` as the legacy trainer's old-log-prob pass leaves it for a strategy that reads no statistics:
    the captured mask and the step (``verl_rhythm.glue.ray_trainer.CAPTURED_MASK`` and ``STEP``)."""
    data = batch()
    data.batch["rhythm_response_mask"] = data.batch["response_mask"].clone()
    data.batch["rhythm_step"] = torch.zeros(4, dtype=torch.long)
    return data


def grpo_matches(out):
    data = batch()
    expected, _ = core_algos.compute_grpo_outcome_advantage(
        data.batch["token_level_rewards"], data.batch["response_mask"], data.non_tensor_batch["uid"]
    )
    return bool(torch.allclose(out.batch["advantages"], expected))


def refused(fn):
    """The message of the RhythmDisabled that fn() raises (None if it does not raise)."""
    try:
        fn()
    except seams.RhythmDisabled as err:
        return str(err)
    return None


def own(fn, module):
    """Whether fn is verl's own function of module (not a wrapper)."""
    return not is_wrapped(fn) and getattr(fn, "__module__", None) == module


def finish():
    seen["disabled"] = seams.disabled()
    seen["is_patched"] = plugin.is_patched()
    print(json.dumps(seen))
'''


def expected_line(disabled: dict[str, str]) -> str:
    changes = "; ".join(f"{seam} ({why})" for seam, why in sorted(disabled.items()))
    return f"verl-rhythm disabled: verl {VERSION} changed {changes}; {LINE_END}"


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if f"verl-rhythm: verl {VERSION} changed" in line]


# ---------------------------------------------------------------------------------------------------------------------
# (a) a wrapped method renamed, (b) required parameters added, the Ulysses global renamed


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    rename = ("_compute_old_log_prob(", "_compute_old_log_prob_v2(")
    return drifted_verl(
        tmp_path_factory,
        "verl_moved",
        {
            TRAINER_BASE: [(*rename, 2)],  # the definition and verl's own call
            "verl/trainer/ppo/v1/trainer_separate_async.py": [(*rename, 4)],
            ENGINE: [
                (
                    FSDP_FORWARD_STEP,
                    FSDP_FORWARD_STEP.replace("forward_only):", "forward_only, extra_state):"),
                    1,
                )
            ],
            RAY_TRAINER: [
                (
                    "    def _compute_old_log_prob(self, batch: DataProto):",
                    "    def _compute_old_log_prob(self, batch: DataProto, mode):",
                    1,
                )
            ],
            "verl/models/transformers/monkey_patch.py": [
                (
                    "import _flash_attention_forward\n",
                    "import _flash_attention_forward as _fa_forward\n",
                    1,
                ),
                ("    attn_output = _flash_attention_forward(", "    attn_output = _fa_forward(", 1),
            ],
        },
    )


MOVED = {
    "verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_old_log_prob": "not found",
    "verl.trainer.ppo.ray_trainer.RayPPOTrainer._compute_old_log_prob": "new required parameter 'mode'",
    "verl.workers.engine.fsdp.transformer_impl.FSDPEngineWithLMHead.forward_step": (
        "new required parameter 'extra_state'"
    ),
}
ULYSSES = {"verl.models.transformers.monkey_patch._flash_attention_forward": "not found"}

MOVED_PROBE = r"""
PPOTrainer, RayPPOTrainer = trainer_base.PPOTrainer, ray_trainer.RayPPOTrainer
seen["own"] = {
    "renamed": own(PPOTrainer._compute_old_log_prob_v2, "verl.trainer.ppo.v1.trainer_base"),
    "legacy_old_log_prob": own(RayPPOTrainer._compute_old_log_prob, "verl.trainer.ppo.ray_trainer"),
    "forward_step": own(transformer_impl.FSDPEngineWithLMHead.forward_step, transformer_impl.__name__),
}
seen["wrapped"] = {
    "init": is_wrapped(PPOTrainer.init),
    "_compute_advantage": is_wrapped(PPOTrainer._compute_advantage),
    "legacy __init__": is_wrapped(RayPPOTrainer.__init__),
    "compute_advantage": is_wrapped(ray_trainer.compute_advantage),
    "compute_data_metrics": is_wrapped(metric_utils.compute_data_metrics),
}
seen["registered"] = "rhythm" in core_algos.ADV_ESTIMATOR_REGISTRY
from verl_rhythm.glue import contract
seen["contract"] = contract.changed("verl.trainer.ppo.v1.trainer_base:PPOTrainer")

# a run that does not use rhythm: verl's own code
seen["grpo"] = grpo_matches(ray_trainer.compute_advantage(batch(), "grpo", config=GRPO.algorithm))
seen["grpo_checks"] = check_rhythm_run(GRPO) is None
trainer = PPOTrainerSync(config=GRPO)
calls = []
trainer._setup = lambda: calls.append("_setup")  # starts the workers: not here
trainer.on_init_end = lambda: calls.append("on_init_end")
trainer.init()
seen["grpo_init"] = list(calls)

# a rhythm run stops at start-up, before anything starts
rhythm_trainer = PPOTrainerSync(config=RHYTHM)
calls.clear()
rhythm_trainer._setup = lambda: calls.append("_setup")
seen["init_refusal"] = refused(rhythm_trainer.init)
seen["init_calls"] = calls
seen["check_refusal"] = refused(lambda: check_rhythm_run(RHYTHM))
seen["legacy_refusal"] = refused(
    lambda: RayPPOTrainer(config=RHYTHM, tokenizer=None, role_worker_mapping={}, resource_pool_manager=None)
)
data = batch()
seen["estimator_refusal"] = refused(
    lambda: core_algos.get_adv_estimator_fn("rhythm")(
        token_level_rewards=data.batch["token_level_rewards"], response_mask=data.batch["response_mask"],
        config=RHYTHM.algorithm, index=data.non_tensor_batch["uid"],
    )
)
finish()
"""


def test_a_renamed_or_reshaped_seam_leaves_verl_its_own_and_refuses_only_rhythm(moved):
    seen, stderr = probe(moved, MOVED_PROBE)
    # importing verl's modules records the seams that moved, and nothing raises into the imports
    assert seen["imported"] == MOVED
    assert all(seen["own"].values()), seen["own"]
    assert all(seen["wrapped"].values()), seen["wrapped"]  # the seams that did not move are still in place
    assert seen["registered"]
    # the pinned-source review table names the renamed method too (contract.changed)
    assert seen["contract"] == {
        "verl.trainer.ppo.v1.trainer_base:PPOTrainer._compute_old_log_prob": "b2630e6178ed99f7 -> missing"
    }
    assert seen["is_patched"] == {
        "verl.trainer.ppo.core_algos": True,
        "verl.trainer.ppo.v1.trainer_base": False,
        "verl.trainer.ppo.ray_trainer": False,
        "verl.trainer.ppo.metric_utils": True,
        "verl.workers.engine.fsdp.transformer_impl": False,
    }
    # GRPO: verl's advantage, verl's init
    assert seen["grpo"] and seen["grpo_checks"]
    assert seen["grpo_init"] == ["_setup", "on_init_end"]
    # rhythm: one line naming verl's version and each function that moved; the start-up check also found the
    # Ulysses seam (otherwise installed by the first capture)
    line = expected_line({**MOVED, **ULYSSES})
    assert seen["disabled"] == {**MOVED, **ULYSSES}
    assert seen["init_refusal"] == line and "\n" not in line
    assert seen["init_calls"] == []
    assert seen["check_refusal"] == line
    assert seen["legacy_refusal"] == line
    assert seen["estimator_refusal"] == line
    # one WARNING line per seam, naming verl's version and the function
    warnings = warnings_of(stderr)
    assert len(warnings) == len(seen["disabled"]), warnings
    for seam, why in seen["disabled"].items():
        assert sum(f"changed {seam} ({why})" in w for w in warnings) == 1, (seam, warnings)


# ---------------------------------------------------------------------------------------------------------------------
# the start-up seams themselves moved: the v1 trainer's init, the legacy __init__, verl's register_adv_est


@pytest.fixture(scope="module")
def init_moved(tmp_path_factory):
    return drifted_verl(
        tmp_path_factory,
        "verl_init_moved",
        {
            TRAINER_BASE: [("    def init(self):\n", "    def initialize(self):\n", 1)],
            "verl/trainer/main_ppo.py": [("self.trainer.init()", "self.trainer.initialize()", 1)],
            RAY_TRAINER: [  # a required keyword-only parameter of the legacy constructor
                ("        device_name=None,\n    ):", "        device_name=None,\n        *,\n        role,\n    ):", 1)
            ],
            "verl/trainer/ppo/core_algos.py": [("register_adv_est", "register_advantage_estimator", 27)],
        },
    )


INIT_MOVED = {
    "verl.trainer.ppo.core_algos.register_adv_est": "not found",
    "verl.trainer.ppo.v1.trainer_base.PPOTrainer.init": "not found",
    "verl.trainer.ppo.ray_trainer.RayPPOTrainer.__init__": "new required parameter 'role'",
}

INIT_MOVED_PROBE = r"""
PPOTrainer, RayPPOTrainer = trainer_base.PPOTrainer, ray_trainer.RayPPOTrainer
seen["own"] = {
    "initialize": own(PPOTrainer.initialize, "verl.trainer.ppo.v1.trainer_base"),
    "legacy __init__": own(RayPPOTrainer.__init__, "verl.trainer.ppo.ray_trainer"),
}
seen["guards"] = [is_wrapped(PPOTrainer.__init__), is_wrapped(RayPPOTrainer.init_workers)]
seen["registered"] = "rhythm" in core_algos.ADV_ESTIMATOR_REGISTRY
try:
    core_algos.get_adv_estimator_fn("rhythm")
except ValueError as err:
    seen["verl_unknown"] = str(err)

# not rhythm: verl's constructor and advantage
trainer = PPOTrainerSync(config=GRPO)
seen["grpo_constructed"] = trainer.config is GRPO and hasattr(trainer, "replay_buffer")
seen["grpo"] = grpo_matches(ray_trainer.compute_advantage(batch(), "grpo", config=GRPO.algorithm))

# rhythm: the constructor (v1) and init_workers (legacy) refuse before verl's code runs
seen["constructor_refusal"] = refused(lambda: PPOTrainerSync(config=RHYTHM))
legacy = object.__new__(RayPPOTrainer)
legacy.config = RHYTHM
seen["init_workers_refusal"] = refused(legacy.init_workers)
finish()
"""


def test_when_the_start_up_seam_moved_the_next_start_up_method_refuses(init_moved):
    seen, stderr = probe(init_moved, INIT_MOVED_PROBE)
    assert seen["imported"] == INIT_MOVED
    assert all(seen["own"].values()), seen["own"]
    assert seen["guards"] == [True, True]
    # register_adv_est moved: rhythm is not registered, and verl 0.9.1's get_adv_estimator_fn says so itself
    assert not seen["registered"]
    assert seen["verl_unknown"] == "Unknown advantage estimator simply: rhythm"
    assert seen["grpo_constructed"] and seen["grpo"]
    line = expected_line(INIT_MOVED)
    assert seen["disabled"] == INIT_MOVED
    assert seen["constructor_refusal"] == line
    assert seen["init_workers_refusal"] == line
    assert len(warnings_of(stderr)) == len(INIT_MOVED)
    assert seen["is_patched"]["verl.trainer.ppo.core_algos"] is False


# ---------------------------------------------------------------------------------------------------------------------
# a parameter added with a default: compatible, wrapped, passed through


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    return drifted_verl(
        tmp_path_factory,
        "verl_grown",
        {
            ENGINE: [
                (
                    FSDP_FORWARD_STEP,
                    FSDP_FORWARD_STEP.replace("forward_only):", "forward_only, extra=None):").replace(
                        "        device_name",
                        '        if extra is not None:\n            return "extra", extra\n        device_name',
                    ),
                    1,
                )
            ],
            RAY_TRAINER: [
                (
                    "    config: Optional[AlgoConfig] = None,\n) -> DataProto:",
                    "    config: Optional[AlgoConfig] = None,\n    extra=None,\n) -> DataProto:",
                    1,
                ),
                (
                    "    # Back-compatible with trainers that do not compute response mask in fit\n",
                    '    data.meta_info["extra_seen"] = extra\n',
                    1,
                ),
                (
                    "    def _compute_old_log_prob(self, batch: DataProto):\n",
                    "    def _compute_old_log_prob(self, batch: DataProto, extra=None):\n"
                    "        if extra is not None:\n            return extra, batch\n",
                    1,
                ),
            ],
        },
    )


GROWN_PROBE = r"""
from types import SimpleNamespace
from tensordict import TensorDict

step = transformer_impl.FSDPEngineWithLMHead.forward_step
micro_batch = TensorDict({"input_ids": torch.zeros(2, 3)}, batch_size=[2])
seen["wrapped"] = [is_wrapped(step), is_wrapped(ray_trainer.compute_advantage),
                   is_wrapped(ray_trainer.RayPPOTrainer._compute_old_log_prob)]
seen["forward_step"] = [
    list(step(SimpleNamespace(), micro_batch, None, True, extra=7)),
    list(step(SimpleNamespace(), micro_batch, None, True, 8)),  # by position, after verl's three
]
out = ray_trainer.compute_advantage(batch(), "grpo", config=GRPO.algorithm, extra="x")
seen["grpo"] = [grpo_matches(out), out.meta_info["extra_seen"]]
out = ray_trainer.compute_advantage(rhythm_batch(), "rhythm", 1.0, 1.0, 1, True, RHYTHM.algorithm, "y")
seen["rhythm"] = [out.meta_info["extra_seen"], "rhythm/gamma_mean" in out.meta_info["rhythm_metrics"]]
legacy = SimpleNamespace(config=GRPO)
seen["old_log_prob"] = ray_trainer.RayPPOTrainer._compute_old_log_prob(legacy, "batch", extra=5)[0]
seen["rhythm_check"] = check_rhythm_run(RHYTHM) is not None
finish()
"""


def test_a_parameter_added_with_a_default_is_passed_through(grown):
    seen, stderr = probe(grown, GROWN_PROBE)
    assert seen["imported"] == {} and seen["disabled"] == {} and warnings_of(stderr) == []
    assert seen["wrapped"] == [True, True, True]
    assert seen["is_patched"] == dict.fromkeys(seen["is_patched"], True) and len(seen["is_patched"]) == 5
    assert seen["forward_step"] == [["extra", 7], ["extra", 8]]
    assert seen["grpo"] == [True, "x"]
    assert seen["rhythm"] == ["y", True]  # the rhythm path: config read by position, the extra passed through
    assert seen["old_log_prob"] == 5
    assert seen["rhythm_check"]


def test_every_wrapped_seam_names_verl_0_9_1_parameters():
    """The parameter lists the seam checks compare against are verl 0.9.1's (so the check passes on it)."""
    import inspect

    import verl
    from verl.trainer.ppo import core_algos, metric_utils, ray_trainer
    from verl.trainer.ppo.v1 import trainer_base
    from verl.workers.engine.fsdp import transformer_impl as engine

    from verl_rhythm.glue import core_algos as glue_algos
    from verl_rhythm.glue import ray_trainer as glue_ray
    from verl_rhythm.glue import seams
    from verl_rhythm.glue import trainer_base as glue_trainer
    from verl_rhythm.glue import transformer_impl as glue_engine
    from verl_rhythm.glue.contract import VERL_VERSIONS
    from verl_rhythm.wrapping import stock

    if verl.__version__ not in VERL_VERSIONS:
        pytest.skip(f"verl {verl.__version__}: the lists are verl {', '.join(VERL_VERSIONS)}'s")

    def params(fn, method=False):
        names = list(inspect.signature(stock(fn)).parameters)
        return tuple(names[1:] if method else names)

    for name, shape in glue_trainer.SHAPES.items():
        assert params(getattr(trainer_base.PPOTrainer, name), True) == shape["known"], name
    for name in glue_ray.METHODS:
        assert params(getattr(ray_trainer.RayPPOTrainer, name), True) == glue_ray.SHAPES[name]["known"], name
    assert params(ray_trainer.compute_advantage) == glue_ray.SHAPES["compute_advantage"]["known"]
    assert params(engine.FSDPEngineWithLMHead.forward_step, True) == glue_engine.KNOWN
    assert params(core_algos.compute_grpo_outcome_advantage) == glue_algos.GRPO_KNOWN
    assert params(metric_utils.compute_data_metrics) == ("batch", "use_critic")
    assert seams.disabled() == {}
