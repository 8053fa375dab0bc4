# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The recipes compose against the installed verl 0.9.1 through its own CLI, validate, and switch strategy by one key.

Every case is ``python -m verl.trainer.main_ppo --config-path ... --config-name ... --cfg job [overrides]``: one
subprocess runs them all through ``verl.trainer.main_ppo.main`` (the function ``python -m`` calls) with the CLI's
argv, because importing verl takes ~12 s here. The launch scripts run for real with ``PYTHON`` pointing at a
recorder, and the argv they would hand to verl is composed the same way. The wheel test builds and installs a real
wheel and runs the CLI itself against ``pkg://verl_rhythm.recipes``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from verl_rhythm.config import STRATEGIES, RhythmConfig
from verl_rhythm.data import reward

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
RECIPE_NAMES = sorted(p.stem for p in RECIPES.glob("*.yaml"))
FIELDS = {f.name for f in RhythmConfig.fields()}
PKG_CASES = ("rhythm_grpo", "rhythm_math_4b_8k")  # the plainest recipe and the one with the most partials
COMPOSED_SCRIPTS = ("gsm8k", "math", "math_4b_8k", "math_1gpu", "countdown")
QWEN3_LAYERS = 36  # Qwen3-4B-Base and Qwen3-8B-Base both have 36 decoder layers

PAPER_MATH = {  # recipe -> (model, max response length), the paper's math settings (spec Sec. 5)
    "rhythm_math": ("Qwen/Qwen3-8B-Base", 1024),
    "rhythm_math_4b": ("Qwen/Qwen3-4B-Base", 1024),
    "rhythm_math_4b_8k": ("Qwen/Qwen3-4B-Base", 8192),
    "rhythm_math_8b_8k": ("Qwen/Qwen3-8B-Base", 8192),
}

NON_DEFAULT = {  # a valid non-default value for every algorithm.rhythm key
    "strategy": "bottom",
    "sign": "positive",
    "top_q": 0.25,
    "gamma_amp": 2.0,
    "alpha": 0.75,
    "intro_window": 5,
    "waad_window": 8,
    "fai_horizon_lo": 5,
    "fai_horizon_hi": 50,
    "head_quantile": 0.2,
    "head_group_scope": "micro_batch",
    "layers": [10, 14, 18],
    "bottom_score": "local",
    "seed": 3,
    "chunk_size": 64,
}

COMPOSER = r"""
import contextlib, io, json, sys
from verl.trainer import main_ppo

cases = json.loads(sys.stdin.read())
results = {}
for case_id, argv in cases.items():
    sys.argv = ["main_ppo", *argv]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main_ppo.main()
        except SystemExit as exc:  # hydra reports a bad override and exits 1
            code = exc.code
    results[case_id] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-3000:]}
with open(RESULT_PATH, "w") as f:
    json.dump(results, f)
"""

RECORDER = """#!/usr/bin/env bash
n=$(ls "$RECORD_DIR" | wc -l)
printf '%s\\0' "$@" > "$RECORD_DIR/$(printf %03d "$n")"
"""


def job(name: str, *overrides: str, config_path: str | None = None) -> list[str]:
    return ["--config-path", config_path or str(RECIPES), "--config-name", name, "--cfg", "job", *overrides]


def run_script(tmp: Path, script: str, **env: str) -> tuple[int, list[list[str]], str]:
    """Run a launch script with ``PYTHON`` = a recorder; returns its exit code and the argv of each verl call."""
    record = tmp / f"rec_{script}_{len(list(tmp.glob('rec_*')))}"
    record.mkdir()
    recorder = tmp / "python_recorder"
    if not recorder.exists():
        recorder.write_text(RECORDER)
        recorder.chmod(0o755)
    full_env = {**os.environ, "PYTHON": str(recorder), "RECORD_DIR": str(record), "DRY_RUN": "1", **env}
    proc = subprocess.run(["bash", str(RECIPES / script)], env=full_env, capture_output=True, text=True, timeout=60)
    calls = [p.read_text().split("\0")[:-1] for p in sorted(record.iterdir())]
    for argv in calls:
        assert argv[:2] == ["-m", "verl.trainer.main_ppo"], argv
    return proc.returncode, [argv[2:] for argv in calls], proc.stderr


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    """Recorded verl calls of the launch scripts, by scenario."""
    tmp = tmp_path_factory.mktemp("scripts")
    runs = {
        "gsm8k": run_script(tmp, "run_rhythm_gsm8k.sh"),
        "gsm8k_none": run_script(tmp, "run_rhythm_gsm8k.sh", STRATEGY="none"),
        "gsm8k_1gpu": run_script(tmp, "run_rhythm_gsm8k_1gpu.sh"),
        "math": run_script(tmp, "run_rhythm_math.sh"),
        "math_4b_8k": run_script(
            tmp, "run_rhythm_math.sh", MODEL_SIZE="4b", RESPONSE="8k", STRATEGY="local", MODEL_PATH="/models/q3-4b"
        ),
        "math_bad_size": run_script(tmp, "run_rhythm_math.sh", MODEL_SIZE="7b"),
        "math_1gpu": run_script(tmp, "run_rhythm_math_1gpu.sh"),
        "countdown": run_script(tmp, "run_rhythm_countdown.sh", DATA_DIR="/data/cd", LOGGER='["console","wandb"]'),
        "countdown_1gpu": run_script(tmp, "run_rhythm_countdown_1gpu.sh"),
        "table": run_script(tmp, "run_rhythm_table.sh"),
        "table_countdown": run_script(tmp, "run_rhythm_table.sh", TASK="countdown", STRATEGIES="none coupled"),
        "table_bad_task": run_script(tmp, "run_rhythm_table.sh", TASK="chess"),
    }
    return runs


@pytest.fixture(scope="module")
def composed(scripts, tmp_path_factory):
    """Composed configs (or hydra's error) of every case, from one subprocess."""
    cases = {}
    for i, name in enumerate(RECIPE_NAMES):  # each recipe with another strategy
        cases[f"repo:{name}"] = job(name, f"algorithm.rhythm.strategy={STRATEGIES[i % len(STRATEGIES)]}")
    for strategy in STRATEGIES[len(RECIPE_NAMES) :]:  # the strategies the recipes above did not take
        cases[f"strategy:{strategy}"] = job("rhythm_grpo", f"algorithm.rhythm.strategy={strategy}")
    for name in PKG_CASES:
        cases[f"pkg:{name}"] = job(name, config_path="pkg://verl_rhythm.recipes")
    every_key = [f"algorithm.rhythm.{k}={json.dumps(v).replace(' ', '')}" for k, v in NON_DEFAULT.items()]
    cases["every_key"] = job("rhythm_grpo", *every_key)
    cases["unknown_key"] = job("rhythm_grpo", "algorithm.rhythm.not_a_key=1")
    for scenario in COMPOSED_SCRIPTS:
        cases[f"script:{scenario}"] = scripts[scenario][1][0]
    tmp = tmp_path_factory.mktemp("compose")
    result_path = tmp / "results.json"
    proc = subprocess.run(
        [sys.executable, "-c", COMPOSER.replace("RESULT_PATH", repr(str(result_path)))],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(result_path.read_text())
    out = {}
    for case_id, res in results.items():
        if res["code"] in (0, None):
            out[case_id] = OmegaConf.create(res["stdout"])
        else:
            out[case_id] = res
    return out


def cfg_of(composed, case_id):
    cfg = composed[case_id]
    assert not isinstance(cfg, dict), f"{case_id} failed to compose:\n{cfg['stderr']}"
    return cfg


def test_recipes_exist():
    assert {"rhythm_grpo", "rhythm_gsm8k", "rhythm_countdown", *PAPER_MATH} <= set(RECIPE_NAMES)


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_composes_validates_and_takes_the_strategy_from_one_key(composed, name, monkeypatch):
    from transformers.modeling_flash_attention_utils import FLASH_ATTENTION_COMPATIBILITY_MATRIX

    from verl_rhythm.glue.checks import ATTN_IMPLEMENTATION_KEY, RhythmSetupError, check_rhythm_run

    strategy = STRATEGIES[RECIPE_NAMES.index(name) % len(STRATEGIES)]
    cfg = cfg_of(composed, f"repo:{name}")
    assert cfg.algorithm.adv_estimator == "rhythm"
    assert set(cfg.algorithm.rhythm) == FIELDS  # the whole block is declared: no '+' needed for any key
    assert RhythmConfig.from_algorithm_config(cfg.algorithm) == RhythmConfig(strategy=strategy)
    assert cfg.trainer.experiment_name.endswith("_" + strategy)
    # the paper's GRPO: no KL anywhere, no entropy bonus, sampling at temperature 1, groups of responses
    assert cfg.algorithm.use_kl_in_reward is False and cfg.actor_rollout_ref.actor.use_kl_loss is False
    assert cfg.actor_rollout_ref.actor.entropy_coeff == 0
    assert cfg.actor_rollout_ref.rollout.temperature == 1.0 and cfg.actor_rollout_ref.rollout.n >= 2
    # the start-up checks of the verl glue pass (num_layers given: no model download) where the recipe runs: the GPU
    # recipes keep verl's FlashAttention-2, so without flash-attn (this machine) they stop at start-up, by key
    if str(cfg.trainer.device) != "cpu":
        assert OmegaConf.select(cfg, ATTN_IMPLEMENTATION_KEY, default="flash_attention_2") == "flash_attention_2"
        with pytest.raises(RhythmSetupError, match=ATTN_IMPLEMENTATION_KEY.replace(".", r"\.")):
            check_rhythm_run(cfg, num_layers=QWEN3_LAYERS)
        # a GPU machine with flash-attn installed: transformers' own package check says yes (mocked: no GPU here)
        matrix = FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]
        monkeypatch.setitem(matrix, "pkg_availability_check", lambda *a, **k: True)
    assert check_rhythm_run(cfg, num_layers=QWEN3_LAYERS) == RhythmConfig(strategy=strategy)


@pytest.mark.parametrize("name", PKG_CASES)
def test_installed_package_path_gives_the_same_config(composed, name):
    repo = OmegaConf.to_container(cfg_of(composed, f"repo:{name}"))
    pkg = OmegaConf.to_container(cfg_of(composed, f"pkg:{name}"))
    assert RhythmConfig.from_dict(pkg["algorithm"]["rhythm"]) == RhythmConfig()  # the defaults, as declared
    repo["algorithm"]["rhythm"]["strategy"] = pkg["algorithm"]["rhythm"]["strategy"]
    assert pkg == repo


def test_every_strategy_is_reached_and_every_key_overrides_without_plus(composed):
    reached = [cfg_of(composed, f"repo:{n}").algorithm.rhythm.strategy for n in RECIPE_NAMES]
    reached += [cfg_of(composed, f"strategy:{s}").algorithm.rhythm.strategy for s in STRATEGIES[len(RECIPE_NAMES) :]]
    assert sorted(reached) == sorted(STRATEGIES)
    for strategy in STRATEGIES[len(RECIPE_NAMES) :]:
        cfg = cfg_of(composed, f"strategy:{strategy}")
        assert RhythmConfig.from_algorithm_config(cfg.algorithm) == RhythmConfig(strategy=strategy)
    cfg = cfg_of(composed, "every_key")
    assert RhythmConfig.from_algorithm_config(cfg.algorithm).to_dict() == NON_DEFAULT
    failed = composed["unknown_key"]
    assert isinstance(failed, dict) and failed["code"] == 1 and "not_a_key" in failed["stderr"]


@pytest.mark.parametrize("name", sorted(PAPER_MATH))
def test_math_recipes_carry_the_papers_setting(composed, name):
    cfg = cfg_of(composed, f"repo:{name}")
    model, response_length = PAPER_MATH[name]
    assert cfg.actor_rollout_ref.model.path == model
    assert cfg.data.max_response_length == response_length
    assert cfg.data.train_batch_size == 512 and cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 32
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-6
    assert Path(cfg.data.train_files).name == "dapo_math_17k.parquet"
    assert [Path(f).stem for f in cfg.data.val_files] == list(reward.MATH_EVAL_SOURCES)
    assert_reward_function_is_ours(cfg)


def test_gsm8k_and_countdown_recipes(composed):
    gsm8k = cfg_of(composed, "repo:rhythm_gsm8k")
    assert (gsm8k.actor_rollout_ref.model.path, gsm8k.data.max_response_length) == ("Qwen/Qwen3-4B-Base", 1024)
    assert gsm8k.reward.custom_reward_function.path is None  # verl's own GSM8K scorer (data_source openai/gsm8k)
    countdown = cfg_of(composed, "repo:rhythm_countdown")
    assert countdown.data.max_response_length == 1024
    assert [Path(countdown.data.train_files).name, Path(countdown.data.val_files).name] == [
        "train.parquet",
        "test.parquet",
    ]
    assert_reward_function_is_ours(countdown)


def assert_reward_function_is_ours(cfg):
    """verl's own loader (``load_extern_object``, as ``get_custom_reward_fn`` calls it) finds the scorer."""
    from verl.utils.import_utils import load_extern_object

    fn = cfg.reward.custom_reward_function
    assert load_extern_object(fn.path, fn.name) is reward.compute_score


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_token_budgets_fit_one_whole_sequence(composed, name):
    """With dynamic batching a micro-batch must hold at least one prompt+response, in training and in the
    log-prob passes (where the capture runs)."""
    cfg = cfg_of(composed, f"repo:{name}")
    longest = cfg.data.max_prompt_length + cfg.data.max_response_length
    arr = cfg.actor_rollout_ref
    for budget in (
        arr.actor.ppo_max_token_len_per_gpu,
        arr.rollout.log_prob_max_token_len_per_gpu,
        arr.ref.log_prob_max_token_len_per_gpu,
    ):
        assert budget >= longest


def test_launch_scripts_hand_verl_the_recipe_and_their_settings(scripts, composed):
    for scenario in ("gsm8k", "gsm8k_1gpu", "math", "math_1gpu", "countdown", "countdown_1gpu"):
        code, calls, err = scripts[scenario]
        assert code == 0 and len(calls) == 1, (scenario, err)
    cfg = {k: cfg_of(composed, f"script:{k}") for k in ("gsm8k", "math", "math_4b_8k", "math_1gpu", "countdown")}
    home = os.environ["HOME"]
    assert cfg["gsm8k"].data.train_files == f"{home}/data/gsm8k/train.parquet"
    assert cfg["gsm8k"].trainer.n_gpus_per_node == 8 and cfg["gsm8k"].algorithm.rhythm.strategy == "coupled"
    assert "algorithm.rhythm.strategy=none" in scripts["gsm8k_none"][1][0]
    assert cfg["math"].actor_rollout_ref.model.path == "Qwen/Qwen3-8B-Base"
    assert list(cfg["math"].data.val_files) == [
        f"{home}/data/rhythm_math/{s}.parquet" for s in reward.MATH_EVAL_SOURCES
    ]
    big = cfg["math_4b_8k"]
    assert (big.actor_rollout_ref.model.path, big.data.max_response_length) == ("/models/q3-4b", 8192)
    assert big.algorithm.rhythm.strategy == "local" and big.trainer.experiment_name == "math_qwen3_4b_base_8k_local"
    assert scripts["math_bad_size"][0] == 2 and scripts["math_bad_size"][1] == []
    assert cfg["countdown"].data.val_files == "/data/cd/test.parquet"
    assert list(cfg["countdown"].trainer.logger) == ["console", "wandb"]
    small = cfg["math_1gpu"]
    assert small.trainer.n_gpus_per_node == 1 and small.data.train_batch_size == 64
    assert small.actor_rollout_ref.actor.fsdp_config.optimizer_offload is True
    assert small.actor_rollout_ref.model.path == "Qwen/Qwen3-4B-Base"
    for one_gpu, config_name in (("gsm8k_1gpu", "rhythm_gsm8k"), ("countdown_1gpu", "rhythm_countdown")):
        (argv,) = scripts[one_gpu][1]  # the same overrides as math_1gpu, composed above
        assert argv[argv.index("--config-name") + 1] == config_name
        assert {"trainer.n_gpus_per_node=1", "data.train_batch_size=64"} <= set(argv)
        assert "actor_rollout_ref.actor.fsdp_config.optimizer_offload=true" in argv


def test_table_script_runs_the_papers_strategies_in_turn(scripts):
    code, calls, _ = scripts["table"]
    assert code == 0
    strategies = [[a for a in argv if a.startswith("algorithm.rhythm.strategy=")][-1].split("=")[1] for argv in calls]
    assert strategies == ["none", "random", "entropy", "global", "local", "coupled"]
    assert all(argv[argv.index("--config-name") + 1] == "rhythm_math" for argv in calls)
    assert calls[-1] == scripts["math"][1][0]  # the last run is run_rhythm_math.sh's own (composed above)
    code, calls, _ = scripts["table_countdown"]
    assert code == 0 and [argv[argv.index("--config-name") + 1] for argv in calls] == ["rhythm_countdown"] * 2
    code, calls, err = scripts["table_bad_task"]
    assert code == 2 and calls == [] and "TASK=chess" in err


def test_wheel_ships_the_recipes_and_verls_cli_composes_them_from_pkg(tmp_path):
    """A real wheel, installed into a scratch target folder ahead of the editable install on ``PYTHONPATH``."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for item in ("setup.py", "README.md"):
        shutil.copy(ROOT / item, src / item)
    for item in ("verl_rhythm", "recipes"):
        shutil.copytree(ROOT / item, src / item, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("verl_rhythm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"verl_rhythm/recipes/{p.relative_to(RECIPES)}" for p in RECIPES.rglob("*") if p.is_file()}
    shipped = {n for n in shipped if "__pycache__" not in n}
    assert shipped <= names, shipped - names
    assert {"verl_rhythm/data/countdown.py", "verl_rhythm/data/reward.py", "verl_rhythm/data/problems.json"} <= names

    target = tmp_path / "target"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = "import verl_rhythm.recipes as r, verl_rhythm.data.reward as d; print(r.__file__, d.__file__)"
    run = dict(env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    where = subprocess.run([sys.executable, "-c", probe], check=True, **run)
    assert all(Path(p).is_relative_to(target) for p in where.stdout.split()), where.stdout
    argv = job("rhythm_math_4b_8k", "algorithm.rhythm.strategy=local", config_path="pkg://verl_rhythm.recipes")
    cli = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", *argv], **run)
    assert cli.returncode == 0, cli.stderr[-3000:]
    cfg = OmegaConf.create(cli.stdout)
    assert cfg.algorithm.rhythm.strategy == "local" and cfg.data.max_response_length == 8192
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-4B-Base"
