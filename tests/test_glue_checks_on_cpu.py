# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Fail-fast start-up checks of a rhythm run, on configs composed from verl 0.9.1's own ``ppo_trainer.yaml``.

Each unsupported setting must stop the run before any worker starts, with an error naming the key. The checks run
inside verl's real ``PPOTrainer.init`` and ``RayPPOTrainer.__init__`` (both wrapped).
"""

import copy
import os

import numpy as np
import pytest
import torch
import yaml
from models import tiny_config
from omegaconf import OmegaConf, open_dict
from transformers.modeling_flash_attention_utils import FLASH_ATTENTION_COMPATIBILITY_MATRIX, FLASH_ATTN_KERNEL_FALLBACK
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_rhythm.config import RhythmConfig, RhythmConfigError
from verl_rhythm.glue import core_algos as rhythm_algos
from verl_rhythm.glue.checks import (
    TURBO_CP_KEY,
    RhythmSetupError,
    check_rhythm_run,
    flash_attention_2_source,
    warn_if_ignored,
)

ATTN = "actor_rollout_ref.model.override_config.attn_implementation"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 6-layer model config on disk (the checks read only the config)."""
    path = tmp_path_factory.mktemp("tiny")
    tiny_config("qwen2", num_layers=6).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def base_config():
    """verl's ``ppo_trainer`` config composed once by Hydra, as ``main_ppo`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from verl.trainer import main_ppo

    config_dir = os.path.join(os.path.dirname(main_ppo.__file__), "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=["algorithm.adv_estimator=rhythm"])


@pytest.fixture
def compose(base_config, model_dir):
    """The base config with ``key=value`` overrides (values parsed as YAML, like Hydra) and ``algorithm.rhythm``;
    SDPA attention unless overridden (this machine has no flash_attn package)."""

    def make(*overrides, rhythm=None):
        config = copy.deepcopy(base_config)
        args = ["actor_rollout_ref.rollout.n=4", f"actor_rollout_ref.model.path={model_dir}", f"{ATTN}=sdpa"]
        args += overrides
        with open_dict(config):
            for arg in args:
                key, _, value = arg.partition("=")
                OmegaConf.update(config, key, yaml.safe_load(value) if value else value, merge=False)
            if rhythm is not None:
                config.algorithm.rhythm = rhythm
        return config

    return make


def test_a_supported_run_passes_and_a_stock_run_is_not_looked_at(compose):
    assert check_rhythm_run(compose()) == RhythmConfig()
    assert check_rhythm_run(compose(rhythm={"strategy": "local", "layers": [1, 5]})).layers == (1, 5)
    # a GRPO run with every setting the rhythm estimator refuses is none of its business
    grpo = compose(
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.rollout.n=1",
        "actor_rollout_ref.actor.strategy=megatron",
    )
    assert check_rhythm_run(grpo) is None


def test_flash_attention_without_the_package_stops_at_start_up(compose, monkeypatch):
    """verl's default attention is FlashAttention-2 and ``pip install 'verl[vllm]'`` brings no flash-attn: one line
    naming the key and the install, before any worker starts."""
    import importlib.util

    assert importlib.util.find_spec("flash_attn") is None  # this machine: no GPU, no flash-attn
    assert flash_attention_2_source() is None
    with pytest.raises(RhythmSetupError) as err:
        check_rhythm_run(compose(f"{ATTN}=flash_attention_2"))
    (line,) = [x for x in str(err.value).splitlines() if ATTN in x]
    assert "flash_attention_2" in line and "transformers has no FlashAttention-2 to load here" in line
    assert "pip install 'verl[fsdp]==0.9.1'" in line and f"+{ATTN}=sdpa" in line
    default = compose()
    with open_dict(default):
        del default.actor_rollout_ref.model.override_config["attn_implementation"]  # verl's default applies
    with pytest.raises(RhythmSetupError, match="flash_attention_2 .verl's default. but transformers has no"):
        check_rhythm_run(default)
    assert check_rhythm_run(compose(f"{ATTN}=flash_attention_2", "trainer.device=cpu"))  # the CPU backend's own
    # Ulysses sequence parallelism on FlashAttention-2 with packed rows: supported once FA2 is there
    sp2 = "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"
    matrix = FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]
    monkeypatch.setitem(matrix, "pkg_availability_check", lambda *a, **k: True)  # transformers' own package check
    assert flash_attention_2_source() == "flash_attn"
    assert check_rhythm_run(compose(f"{ATTN}=flash_attention_2"))  # installed: nothing to say
    assert check_rhythm_run(compose(f"{ATTN}=flash_attention_2", sp2))


@pytest.mark.parametrize("served_by", ["kernels", "npu"])
def test_flash_attention_served_without_the_flash_attn_package_is_accepted(compose, monkeypatch, served_by):
    """transformers also serves ``flash_attention_2`` without flash-attn: from its hub kernel when the ``kernels``
    package is installed (XPU's native path too), and natively on Ascend NPU. A check of the package alone would
    refuse those runs; the check asks what transformers would load (the device itself is not probed: the driver
    that runs the check may see none)."""
    from transformers.utils import import_utils

    if served_by == "kernels":
        monkeypatch.setattr(import_utils, "is_kernels_available", lambda *a, **k: True)
        expected = "kernels:" + FLASH_ATTN_KERNEL_FALLBACK["flash_attention_2"]
    else:
        monkeypatch.setattr(import_utils, "is_torch_npu_available", lambda *a, **k: True)
        expected = "npu"
    assert flash_attention_2_source() == expected
    assert check_rhythm_run(compose(f"{ATTN}=flash_attention_2")) == RhythmConfig()


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["actor_rollout_ref.actor.strategy=megatron"], "actor_rollout_ref.actor.strategy='megatron'"),
        (  # verl's Ulysses runs through FlashAttention-2 only (the fixture's attention is SDPA)
            ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"],
            "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2 with "
            "actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        ),
        (
            [f"{ATTN}=flash_attention_2", "trainer.device=cpu", "actor_rollout_ref.model.use_remove_padding=false"]
            + ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"],
            "ulysses_sequence_parallel_size=2 with actor_rollout_ref.model.use_remove_padding=false",
        ),
        (["algorithm.rollout_correction.bypass_mode=true"], "algorithm.rollout_correction.bypass_mode=true"),
        (["actor_rollout_ref.rollout.n=1"], "actor_rollout_ref.rollout.n=1"),
    ],
)
def test_each_unsupported_setting_fails_by_key(compose, overrides, key):
    with pytest.raises(RhythmSetupError) as err:
        check_rhythm_run(compose(*overrides))
    assert key in str(err.value)


def test_fsdp_turbo_context_parallelism_is_refused_by_key(compose):
    """FSDP-Turbo runs the capture (its engine inherits the FSDP forward step), but its own context parallelism
    shards sequences under eager attention: refused at start-up naming the key; at 1 (verl's default), or on another
    FSDP strategy (which never reads the turbo config), the run passes."""
    turbo = "actor_rollout_ref.actor.strategy=fsdp_turbo"
    assert TURBO_CP_KEY == "actor_rollout_ref.actor.fsdp_config.turbo_config.distributed.ulysses_parallel_size"
    with pytest.raises(RhythmSetupError) as err:
        check_rhythm_run(compose(turbo, f"{TURBO_CP_KEY}=2"))
    (line,) = [x for x in str(err.value).splitlines() if TURBO_CP_KEY in x]
    assert f"{TURBO_CP_KEY}=2" in line and "set it to 1" in line
    assert check_rhythm_run(compose(turbo, f"{TURBO_CP_KEY}=1")) == RhythmConfig()
    assert check_rhythm_run(compose(turbo)) == RhythmConfig()  # verl's default: 1
    assert check_rhythm_run(compose("actor_rollout_ref.actor.strategy=fsdp2", f"{TURBO_CP_KEY}=2")) == RhythmConfig()


def test_layers_outside_the_model_fail_by_key(compose):
    with pytest.raises(RhythmSetupError, match=r"algorithm\.rhythm\.layers=\[0, 6\].*\[6\].*\[0, 5\]"):
        check_rhythm_run(compose(rhythm={"layers": [0, 6]}))


def test_a_bad_rhythm_key_fails_by_key(compose):
    with pytest.raises(RhythmConfigError, match="algorithm.rhythm.top_k"):
        check_rhythm_run(compose(rhythm={"top_k": 0.4}))


def test_an_unreadable_model_config_fails_naming_the_path_key(compose, tmp_path):
    with pytest.raises(RhythmSetupError, match="actor_rollout_ref.model.path"):
        check_rhythm_run(compose(f"actor_rollout_ref.model.path={tmp_path / 'absent'}"))


def test_vision_language_models_are_refused(compose, tmp_path):
    from transformers import Qwen2VLConfig

    Qwen2VLConfig().save_pretrained(tmp_path)
    with pytest.raises(RhythmSetupError, match="vision-language model of model_type='qwen2_vl'.*qwen2_5_vl, qwen3_vl"):
        check_rhythm_run(compose(f"actor_rollout_ref.model.path={tmp_path}"))


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_vision_language_models_pass_with_their_text_decoders_layers(compose, tmp_path, arch):
    """Qwen2.5-VL and Qwen3-VL are read: the layers are the text decoder's (text_config.num_hidden_layers = 6 here,
    the vision tower's two blocks do not count)."""
    from verl_rhythm.testing.vlm import vlm_config

    vlm_config(arch, num_layers=6).save_pretrained(tmp_path)
    path = f"actor_rollout_ref.model.path={tmp_path}"
    assert check_rhythm_run(compose(path)) == RhythmConfig()
    assert check_rhythm_run(compose(path, rhythm={"layers": [5]})).layers == (5,)
    with pytest.raises(RhythmSetupError, match=r"algorithm\.rhythm\.layers=\[0, 6\].*\[6\].*\[0, 5\]"):
        check_rhythm_run(compose(path, rhythm={"layers": [0, 6]}))


def test_attention_free_strategies_skip_the_engine_checks(compose):
    config = compose("actor_rollout_ref.actor.strategy=megatron", rhythm={"strategy": "random"})
    assert check_rhythm_run(config).strategy == "random"
    # the entropy control needs verl's old-log-prob pass, not the capture
    entropy = compose("algorithm.rollout_correction.bypass_mode=true", rhythm={"strategy": "entropy"})
    with pytest.raises(RhythmSetupError, match="token entropy"):
        check_rhythm_run(entropy)


@pytest.mark.parametrize("policy", ["none", "", "other_plugin", "auto,other_plugin"])
def test_a_plugin_policy_that_keeps_rhythm_out_fails(compose, monkeypatch, policy):
    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", policy)
    with pytest.raises(RhythmSetupError, match="VERL_USE_EXTERNAL_PLUGINS"):
        check_rhythm_run(compose())


@pytest.mark.parametrize("policy", ["auto", "rhythm", "other_plugin, rhythm"])
def test_a_plugin_policy_that_loads_rhythm_passes(compose, monkeypatch, policy):
    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", policy)
    assert check_rhythm_run(compose()) is not None


def test_the_ray_runtime_env_plugin_policy_is_checked_too(compose, monkeypatch):
    monkeypatch.delenv("VERL_USE_EXTERNAL_PLUGINS", raising=False)
    config = compose()
    with open_dict(config):
        config.ray_kwargs.ray_init.runtime_env = {"env_vars": {"VERL_USE_EXTERNAL_PLUGINS": "none"}}
    with pytest.raises(RhythmSetupError, match="ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_PLUGINS"):
        check_rhythm_run(config)


def test_all_problems_are_reported_at_once(compose):
    config = compose("actor_rollout_ref.rollout.n=1", "actor_rollout_ref.actor.strategy=megatron")
    with pytest.raises(RhythmSetupError) as err:
        check_rhythm_run(config)
    assert "actor_rollout_ref.rollout.n=1" in str(err.value) and "strategy='megatron'" in str(err.value)


def test_the_v1_trainer_init_checks_before_any_worker_starts(compose, monkeypatch):
    started = []
    monkeypatch.setattr(PPOTrainerSync, "_setup", lambda self: started.append("setup"))
    monkeypatch.setattr(PPOTrainerSync, "on_init_end", lambda self: started.append("init_end"))
    trainer = PPOTrainerSync.__new__(PPOTrainerSync)
    trainer.config = compose("actor_rollout_ref.actor.ulysses_sequence_parallel_size=4")
    with pytest.raises(RhythmSetupError, match="ulysses_sequence_parallel_size=4"):
        trainer.init()
    assert started == []
    trainer.config = compose()
    trainer.init()
    assert started == ["setup", "init_end"]


def test_the_legacy_trainer_runs_the_start_up_checks(compose):
    """``RayPPOTrainer.__init__`` (``trainer.use_v1=false`` and recipe trainers) checks before its workers exist; a
    supported config passes the checks, and every trainer and mode is one (none skips the old-log-prob pass)."""
    config = compose("trainer.use_v1=false", "actor_rollout_ref.rollout.n=1")
    with pytest.raises(RhythmSetupError, match="actor_rollout_ref.rollout.n=1"):
        RayPPOTrainer(config, tokenizer=None, role_worker_mapping={}, resource_pool_manager=None)
    for override in (
        "trainer.use_v1=false",
        "trainer.v1.trainer_mode=colocate_async",
        "trainer.v1.trainer_mode=separate_async",
    ):
        assert check_rhythm_run(compose(override)) is not None


def test_the_estimator_refuses_statistics_laid_out_on_other_rows():
    """If verl ever passes the estimator other rows than the trainer fetched, it stops instead of misaligning."""
    mask = torch.ones(4, 6)
    other = mask.clone()
    other[0, -1] = 0
    config = OmegaConf.create({"adv_estimator": "rhythm", "rhythm": {"strategy": "global"}})
    index = np.array(["a", "a", "b", "b"], dtype=object)
    with rhythm_algos.estimator_inputs(other, rhythm_fai=torch.rand(4, 6), rhythm_waad=torch.rand(4, 6)):
        with pytest.raises(RuntimeError, match="response_mask"):
            rhythm_algos.compute_rhythm_outcome_advantage(torch.zeros(4, 6), mask, config, index)
    # the same statistics on the matching mask are used, and an explicit argument still wins
    fai = torch.rand(4, 6)
    with rhythm_algos.estimator_inputs(mask, rhythm_fai=fai):
        via_context, _ = rhythm_algos.compute_rhythm_outcome_advantage(torch.eye(4, 6), mask, config, index)
    direct, _ = rhythm_algos.compute_rhythm_outcome_advantage(torch.eye(4, 6), mask, config, index, rhythm_fai=fai)
    assert torch.equal(via_context, direct)


@pytest.mark.parametrize(
    ("arch", "setting", "rhythm", "match"),
    [
        ("qwen3_next", {}, {"layers": [0, 3]}, r"algorithm.rhythm.layers=\[0, 3\]: layers \{0: 'linear_attention'\}"),
        ("mistral", {"attention_chunk_size": 64}, None, r"config sets attention_chunk_size=64 \(MistralConfig\)"),
        ("gemma2", {"use_bidirectional_attention": True}, None, r"use_bidirectional_attention=True \(Gemma2Config\)"),
    ],
)
def test_attention_the_capture_cannot_read_is_refused_at_start_up(compose, tmp_path, arch, setting, rhythm, match):
    from models import variant_config

    config = variant_config(arch)
    for key, value in setting.items():
        setattr(config, key, value)
    config.save_pretrained(tmp_path)
    run = compose(f"actor_rollout_ref.model.path={tmp_path}", rhythm=rhythm)
    with pytest.raises(RhythmSetupError, match=match):
        check_rhythm_run(run)


@pytest.mark.parametrize("arch", ["qwen3_next", "gemma2", "gpt_oss", "mistral"])
def test_hybrid_and_variant_models_pass_with_default_layers(compose, tmp_path, arch):
    from models import variant_config

    variant_config(arch).save_pretrained(tmp_path)
    assert check_rhythm_run(compose(f"actor_rollout_ref.model.path={tmp_path}")) == RhythmConfig()


def test_a_remote_model_path_is_read_where_verl_localises_it(compose, model_dir, monkeypatch, tmp_path):
    """``hdfs://`` (any path verl's ``copy_to_local`` localises) is resolved as verl resolves it, not refused.

    The HDFS client cannot run here: verl's own copy function (``verl.utils.fs.copy``, which shells out to
    ``hdfs dfs -get``) is replaced by a local copy from a folder standing in for the remote store; the rest is
    verl's ``copy_to_local`` (cache folder, lock, directory record)."""
    import shutil

    from verl.utils import fs

    store = {"hdfs://cluster/models/tiny": model_dir}
    copied = []

    def hdfs_get(src, dst, **kwargs):
        copied.append(src)
        return shutil.copytree(store[src], dst)

    monkeypatch.setattr(fs, "copy", hdfs_get)
    monkeypatch.setattr(fs.tempfile, "gettempdir", lambda: str(tmp_path))  # verl's cache folder for remote copies
    remote = compose("actor_rollout_ref.model.path=hdfs://cluster/models/tiny", rhythm={"layers": [1, 5]})
    assert check_rhythm_run(remote).layers == (1, 5)
    assert check_rhythm_run(remote).layers == (1, 5)
    assert copied == ["hdfs://cluster/models/tiny"]  # copied once, then verl's cache (where HFModelConfig looks)
    too_deep = compose("actor_rollout_ref.model.path=hdfs://cluster/models/tiny", rhythm={"layers": [6]})
    with pytest.raises(RhythmSetupError, match=r"algorithm.rhythm.layers"):
        check_rhythm_run(too_deep)
    with pytest.raises(RhythmSetupError, match=r"actor_rollout_ref.model.path='/no/such/model'"):
        check_rhythm_run(compose("actor_rollout_ref.model.path=/no/such/model"))


def test_rhythm_keys_on_another_estimator_warn_once(compose, caplog):
    """``algorithm.rhythm.*`` set while ``adv_estimator`` is not ``rhythm``: one warning line, nothing else."""
    grpo = compose("algorithm.adv_estimator=grpo", rhythm={"strategy": "global"})
    with caplog.at_level("WARNING", logger="verl_rhythm.glue.checks"):
        assert check_rhythm_run(grpo) is None
    (record,) = caplog.records
    assert "algorithm.rhythm is set but algorithm.adv_estimator=grpo" in record.getMessage()
    assert "\n" not in record.getMessage()
    caplog.clear()
    plain = compose("algorithm.adv_estimator=grpo")
    with open_dict(plain):
        plain.algorithm.pop("rhythm", None)
    with caplog.at_level("WARNING", logger="verl_rhythm.glue.checks"):
        assert check_rhythm_run(plain) is None and not warn_if_ignored(plain)
    assert caplog.records == []


def test_an_interpolation_error_in_the_config_surfaces(compose):
    """A config value that cannot resolve is the user's error to see, not an absent key silently defaulted."""
    from omegaconf.errors import InterpolationResolutionError

    config = compose()
    with open_dict(config):
        config.actor_rollout_ref.rollout.n = "${oc.env:RHYTHM_TEST_UNSET_VARIABLE}"
    with pytest.raises(InterpolationResolutionError, match="RHYTHM_TEST_UNSET_VARIABLE"):
        check_rhythm_run(config)


def test_the_estimator_without_a_config_refuses_instead_of_training_a_default():
    """Called without verl's ``algorithm`` config, the estimator would train the default ``coupled`` strategy
    whatever the run asked for; it raises, naming the argument."""
    mask = torch.ones(4, 6)
    index = np.array(["a", "a", "b", "b"], dtype=object)
    stats = {"rhythm_waad": torch.rand(4, 6), "rhythm_fai": torch.rand(4, 6)}
    with pytest.raises(ValueError, match="config"):
        rhythm_algos.compute_rhythm_outcome_advantage(torch.eye(4, 6), mask, None, index, **stats)
    with pytest.raises(ValueError, match="config"):
        rhythm_algos.compute_rhythm_outcome_advantage(torch.eye(4, 6), mask, index=index, **stats)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ([], None),
        (["actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2"], "tensor_model_parallel_size=2"),
        (["actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=2"], "pipeline_model_parallel_size=2"),
        (["actor_rollout_ref.actor.megatron.context_parallel_size=2"], "context_parallel_size=2"),
        (["actor_rollout_ref.actor.megatron.virtual_pipeline_model_parallel_size=2"], "virtual_pipeline"),
        (["actor_rollout_ref.model.use_remove_padding=false"], "use_remove_padding=false"),
    ],
)
def test_megatron_runs_on_the_cpu_platform_with_tp_pp_cp_1_only(compose, monkeypatch, overrides, key):
    """The capture on verl's Megatron engine (glue/megatron_impl.py) is verified at TP = PP = CP = 1, packed rows, on
    the CPU platform: that passes, each other setting is refused by its key."""
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    config = compose("actor_rollout_ref.actor.strategy=megatron", *overrides)
    if key is None:
        assert check_rhythm_run(config) == RhythmConfig()
        return
    with pytest.raises(RhythmSetupError, match=key) as err:
        check_rhythm_run(config)
    assert "actor_rollout_ref." in str(err.value) and "TransformerEngine" not in str(err.value)


def test_megatron_off_the_cpu_platform_is_refused_as_unverified(compose, monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    with pytest.raises(RhythmSetupError, match="TransformerEngine attention of GPU runs is unverified"):
        check_rhythm_run(compose("actor_rollout_ref.actor.strategy=megatron"))
