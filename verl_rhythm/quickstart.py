# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Train GRPO + rhythm on a CPU with verl's own ``main_ppo``, on the embedded SmolLM2-135M-Instruct.

``--task images`` trains a vision-language model instead: the tiny random Qwen2.5-VL of :mod:`verl_rhythm.tiny_vlm`
(built in-process, no download) counting dots in images (:mod:`verl_rhythm.data.images`), through verl's multimodal
path (:data:`TASK_OVERRIDES`).

``python -m verl_rhythm.quickstart`` prepares everything offline (the embedded model converted once to an HF folder,
the short-arithmetic data set), then runs ``python -m verl.trainer.main_ppo`` with the ``rhythm_cpu`` recipe on the
CPU backend (``VERL_PLATFORM=cpu``: verl's FSDP2 engine on gloo, the ``hf`` rollout, the stock v1 trainer and
TransferQueue). While it trains, it prints one line per step: the reward, the share of GRPO groups whose rewards
differ, the ``rhythm/*`` credit metrics, the step time with its breakdown and the capture's share. At the end the
output folder holds:

- ``metrics.jsonl``: every metric of every step (verl's ``file`` logger);
- ``curves.png``: reward, credit metrics and the step-time breakdown per step;
- ``train.log``: the full verl log; ``checkpoints/``: verl's checkpoints (with ``--save-freq``).

Any further argument is passed to ``main_ppo`` as a Hydra override, e.g.
``python -m verl_rhythm.quickstart --steps 3 algorithm.rhythm.strategy=global actor_rollout_ref.rollout.n=8``. The
recipe's batch size and attention follow the worker layout the overrides ask for (:func:`fitted_defaults`), so
``python -m verl_rhythm.quickstart --steps 1 trainer.n_gpus_per_node=3
actor_rollout_ref.actor.ulysses_sequence_parallel_size=3`` trains as written, and ``python -m verl_rhythm.quickstart
--steps 1 actor_rollout_ref.actor.strategy=megatron`` trains with verl's Megatron engine (TP = PP = 1; needs
``pip install 'verl-rhythm[megatron]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RECIPE = "rhythm_cpu"
MAIN_PPO = "verl.trainer.main_ppo"
RAY_OOM = "killed due to memory pressure"
"""Ray's memory monitor kills workers above its threshold; verl then waits forever on the dead worker."""
METRICS = "metrics.jsonl"
CURVES = "curves.png"
LOG = "train.log"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m verl_rhythm.quickstart",
        description="Train GRPO + rhythm on a CPU with verl's main_ppo (embedded SmolLM2-135M, short arithmetic; "
        "or --task images: a tiny Qwen2.5-VL counting dots).",
        epilog="Extra arguments are Hydra overrides for main_ppo (key=value).",
    )
    p.add_argument("--steps", type=int, default=5, help="training steps (default 5)")
    p.add_argument("--out", default="rhythm_train", help="output folder (default ./rhythm_train)")
    p.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="arithmetic",
        help="arithmetic (default: short sums, text) or images (counting dots, a vision-language model)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="HF model folder (default: the embedded SmolLM2-135M-Instruct; with --task images the tiny Qwen2.5-VL)",
    )
    p.add_argument("--strategy", default="coupled", help="algorithm.rhythm.strategy (default coupled)")
    p.add_argument("--save-freq", type=int, default=-1, help="trainer.save_freq (default -1: no checkpoints)")
    p.add_argument("--timeout", type=float, default=3600, help="stop main_ppo after this many seconds")
    return p


TASKS = ("arithmetic", "images")
TASK_OVERRIDES = {
    "arithmetic": [],
    "images": [
        # verl/utils/dataset/rl_dataset.py:get_dataset_class: the PIL-only image extraction (no qwen_vl_utils)
        "data.custom_cls.path=pkg://verl_rhythm.data.images",
        "data.custom_cls.name=ImageDataset",
        # the tiny VLM's image-only processor is mapped through auto_map (verl_rhythm.tiny_vlm)
        "actor_rollout_ref.model.trust_remote_code=true",
        # ChatML + 6 vision tokens + the question: about 80 character-level tokens
        "data.max_prompt_length=128",
        "data.max_response_length=16",
        "algorithm.rhythm.waad_window=4",
        "algorithm.rhythm.fai_horizon_lo=2",
        "algorithm.rhythm.fai_horizon_hi=12",
    ],
}
"""Recipe keys each task sets before the user's overrides (which win)."""
TINY_VLM = "tiny-qwen2.5-vl"


def prepare(out: Path, model: str | None, task: str = "arithmetic") -> tuple[Path, Path]:
    """The model folder and the data folder (written once, deterministic)."""
    if task == "images":
        from verl_rhythm.data import images
        from verl_rhythm.tiny_vlm import save_tiny_vlm

        model_dir = Path(model).expanduser() if model is not None else out / TINY_VLM
        if model is None and not (model_dir / "config.json").is_file():
            save_tiny_vlm(model_dir)
        data = out / "data-images"
        if not (data / "train.parquet").is_file() or not (data / "test.parquet").is_file():
            images.main(["--out", str(data)])
        return model_dir, data
    if model is None:
        from verl_rhythm.embedded import EmbeddedModelMissing, embedded_model_dir

        try:
            model_dir = embedded_model_dir()
        except EmbeddedModelMissing as err:
            raise SystemExit(f"error: {err}") from None
    else:
        model_dir = Path(model).expanduser()
        if not (model_dir / "config.json").is_file():
            raise SystemExit(f"error: --model {model}: no config.json there (an HF model folder is needed)")
    data = out / "data"
    if not (data / "train.parquet").is_file() or not (data / "test.parquet").is_file():
        from verl_rhythm.data import arithmetic

        arithmetic.main(["--out", str(data)])
    return model_dir, data


def main_ppo_command(
    model_dir: Path | str, data: Path | str, out: Path | str, overrides: list[str] = (), *, entry: str = MAIN_PPO
) -> list[str]:
    """``python -m verl.trainer.main_ppo`` (or another ``entry`` taking its Hydra arguments) with the CPU recipe on
    ``model_dir`` and ``data/{train,test}.parquet``, checkpoints, Hydra's folder and verl's ``file`` + ``console``
    loggers under ``out``; then ``overrides``."""
    data, out = Path(data), Path(out)
    return [
        sys.executable,
        "-m",
        entry,
        "--config-path",
        "pkg://verl_rhythm.recipes",
        "--config-name",
        RECIPE,
        f"actor_rollout_ref.model.path={model_dir}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'test.parquet'}",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        "trainer.logger=[console,file]",
        f"hydra.run.dir={out / 'hydra'}",
        *overrides,
    ]


def command(model_dir: Path, data: Path, out: Path, args, overrides: list[str]) -> list[str]:
    steps = [
        f"trainer.total_training_steps={args.steps}",
        f"trainer.save_freq={args.save_freq}",
        f"algorithm.rhythm.strategy={args.strategy}",
    ]
    task = TASK_OVERRIDES[getattr(args, "task", "arithmetic")]
    return main_ppo_command(model_dir, data, out, [*steps, *task, *fitted_defaults(overrides), *overrides])


ATTN_KEY = "actor_rollout_ref.model.override_config.attn_implementation"
SP_KEYS = (
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
    "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
)
PROMPTS_PER_STEP = 8
"""The recipe's ``data.train_batch_size`` (and ``actor.ppo_mini_batch_size``: one update per step)."""
RESPONSES_PER_PROMPT = 4
"""The recipe's ``actor_rollout_ref.rollout.n``."""
MICRO_BATCH = 16
"""The recipe's micro-batch size per worker, under each key of :data:`MICRO_KEYS`."""
MICRO_KEYS = (
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
)


STRATEGY_KEY = "actor_rollout_ref.actor.strategy"
MEGATRON_DEFAULTS = (
    "model_engine=megatron",
    "actor_rollout_ref.ref.strategy=megatron",
    "actor_rollout_ref.actor.megatron.vanilla_mbridge=true",
    "actor_rollout_ref.ref.megatron.vanilla_mbridge=true",
    "~actor_rollout_ref.actor.fsdp_config",
    "~actor_rollout_ref.ref.fsdp_config",
)
"""With ``actor_rollout_ref.actor.strategy=megatron``: verl's Megatron configs for the actor and the reference
(``model_engine=megatron``, the group ``ppo_megatron_trainer.yaml`` overrides) in place of the recipe's FSDP sections
and mbridge's own bridge (the CPU backend's shims build on it)."""


def fitted_defaults(overrides: list[str]) -> list[str]:
    """The recipe's own defaults that the worker layout of ``overrides`` needs changed; the user's keys always win.

    - ``actor_rollout_ref.actor.strategy=megatron`` (verl's Megatron engine) takes :data:`MEGATRON_DEFAULTS`.
    - Ulysses sequence parallelism (sp > 1) runs through FlashAttention-2 (``verl/models/transformers/
      monkey_patch.py``), which the CPU backend serves; the recipe's SDPA would be refused at start-up.
    - verl needs ``train_batch_size · n`` divisible by the number of workers (``verl/utils/config.py:validate_config``)
      and the mini-batch's responses divisible by the data-parallel size (``engine_workers.py:TrainingWorker``): the
      recipe's 8 prompts per step round up to the next count that divides, e.g. 9 on 3 workers. Each worker's share
      of the responses must then split into whole micro-batches (``verl/workers/engine/utils.py:
      prepare_micro_batches``): the recipe's micro-batch of 16 becomes the largest size up to 16 that divides it.

    Args:
        overrides: the Hydra overrides given on the command line (``key=value``, ``+key=value``).

    Returns:
        overrides to place before the user's.
    """
    values = dict(o.lstrip("+").split("=", 1) for o in overrides if "=" in o)
    fitted = []
    if values.get(STRATEGY_KEY) == "megatron":
        fitted += [o for o in MEGATRON_DEFAULTS if o.lstrip("~").split("=", 1)[0] not in values]
    sp = max(int(values.get(key, 1)) for key in SP_KEYS)
    if sp > 1 and ATTN_KEY not in values:
        fitted.append(f"{ATTN_KEY}=flash_attention_2")
    workers = int(values.get("trainer.n_gpus_per_node", 1)) * int(values.get("trainer.nnodes", 1))
    data_parallel = max(workers // sp, 1)
    n = int(values.get("actor_rollout_ref.rollout.n", RESPONSES_PER_PROMPT))
    prompts = PROMPTS_PER_STEP
    while (prompts * n) % workers or (prompts * n) % data_parallel:
        prompts += 1
    prompts = int(values.get("data.train_batch_size", prompts))
    for key in ("data.train_batch_size", "actor_rollout_ref.actor.ppo_mini_batch_size"):  # one update per step
        if key not in values and prompts != PROMPTS_PER_STEP:
            fitted.append(f"{key}={prompts}")
    per_worker = prompts * n // data_parallel
    micro = max(d for d in range(1, MICRO_BATCH + 1) if per_worker % d == 0)
    if micro != MICRO_BATCH:
        fitted += [f"{key}={micro}" for key in MICRO_KEYS if key not in values]
    return fitted


REFUSALS = ("RhythmSetupError", "CPUBackendConfigError", "RhythmConfigError")
"""Errors that stop a run at start-up, naming the config key."""


def trainer_label(overrides: list[str]) -> str:
    """Which verl trainer the Hydra ``overrides`` select (the last value of a key wins, as in Hydra)."""
    values = dict(o.lstrip("+").split("=", 1) for o in overrides if "=" in o)
    if values.get("trainer.use_v1", "true").lower() in ("false", "0"):
        return "legacy trainer (RayPPOTrainer)"
    return f"v1 trainer, mode {values.get('trainer.v1.trainer_mode', 'sync')}"


def engine_label(overrides: list[str]) -> str:
    """Which verl engine trains the actor under the Hydra ``overrides``."""
    values = dict(o.lstrip("+").split("=", 1) for o in overrides if "=" in o)
    return "Megatron engine" if values.get(STRATEGY_KEY) == "megatron" else "FSDP2 engine"


def refusal_line(log_lines: list[str]) -> str | None:
    """The last line of a failed run's log that names a start-up refusal (the error and its message), if any."""
    for line in reversed(log_lines):
        if any(f"{name}:" in line for name in REFUSALS):
            return line.strip()
    return None


def step_line(step: int, total: int, m: dict) -> str:
    """One human line for a step's metrics."""

    def get(key, fmt="{:.3f}", default="-"):
        return fmt.format(m[key]) if key in m else default

    step_s = m.get("timing_s/step", 0.0)
    olp = m.get("timing_s/old_log_prob", 0.0)
    capture = m.get("rhythm/capture_s")
    parts = [
        f"step {step}/{total}",
        f"reward {get('critic/score/mean')}",
        f"varied groups {get('rhythm/varied_group_share', '{:.0%}')}",
        f"gamma mean {get('rhythm/gamma_mean')}",
        f"amplified {get('rhythm/amplified_share', '{:.0%}')}",
        f"anchors {get('rhythm/anchor_share', '{:.0%}')}",
        f"preplan {get('rhythm/preplan_share', '{:.0%}')}",
        f"| {step_s:.1f} s (gen {m.get('timing_s/gen', 0):.1f}, old-log-prob {olp:.1f}, "
        f"update {m.get('timing_s/update_actor', 0):.1f})",
    ]
    if capture is not None and step_s > 0:
        parts.append(f"capture {capture:.2f} s = {capture / step_s:.1%} of the step")
    return "  ".join(parts)


def read_metrics(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append((int(row["step"]), row["data"]))
    return rows


def plot(rows: list[tuple[int, dict]], path: Path) -> Path | None:
    """Reward, credit metrics and the step-time breakdown per step, as one PNG."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [s for s, _ in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (
        ("critic/score/mean", "reward mean"),
        ("rhythm/varied_group_share", "groups with varied reward"),
    ):
        if any(key in m for _, m in rows):
            axes[0].plot(steps, [m.get(key, float("nan")) for _, m in rows], marker="o", label=label)
    axes[0].set_title("reward")
    for key, label in (
        ("rhythm/gamma_mean", "γ mean"),
        ("rhythm/amplified_share", "share of tokens with γ > 1"),
        ("rhythm/anchor_share", "anchor share"),
        ("rhythm/preplan_share", "preplan share"),
    ):
        if any(key in m for _, m in rows):
            axes[1].plot(steps, [m.get(key, float("nan")) for _, m in rows], marker="o", label=label)
    axes[1].set_title("rhythm credit")
    bottom = [0.0] * len(rows)
    for key, label in (
        ("timing_s/gen", "generation"),
        ("timing_s/old_log_prob", "old-log-prob (+ capture)"),
        ("timing_s/update_actor", "update"),
    ):
        vals = [m.get(key, 0.0) for _, m in rows]
        axes[2].bar(steps, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    axes[2].plot(steps, [m.get("timing_s/step", 0.0) for _, m in rows], "k.-", label="whole step")
    axes[2].set_title("step time (s)")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args, overrides = _parser().parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        _parser().error(f"unknown argument(s) {bad}: extra arguments must be Hydra overrides key=value")
    if args.steps < 1:
        _parser().error(f"--steps must be >= 1, got {args.steps}")
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_dir, data = prepare(out, args.model, args.task)
    metrics_path = out / METRICS
    metrics_path.unlink(missing_ok=True)
    env = dict(os.environ, VERL_PLATFORM="cpu", VERL_FILE_LOGGER_PATH=str(metrics_path))
    cmd = command(model_dir, data, out, args, overrides)
    print(
        f"training {args.steps} steps of GRPO + rhythm ({args.strategy}) on {model_dir.name}, task {args.task}, "
        f"CPU backend, {engine_label(overrides)}, {trainer_label(overrides)}"
    )
    print(f"log: {out / LOG}")
    start = time.time()
    shown = 0
    seen = 0
    with open(out / LOG, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            try:
                rc = proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                rc = None
            rows = read_metrics(metrics_path)
            for step, m in rows[shown:]:
                print(step_line(step, args.steps, m), flush=True)
            shown = len(rows)
            if rc is not None:
                break
            with open(out / LOG, errors="replace") as f:
                f.seek(seen)
                fresh = f.read()
                seen = f.tell()
            if RAY_OOM in fresh:
                proc.terminate()
                proc.wait()
                print(
                    f"error: Ray killed a worker for lack of memory (see {out / LOG}); free memory or lower "
                    "data.train_batch_size / actor_rollout_ref.rollout.n"
                )
                return 1
            if time.time() - start > args.timeout:
                proc.terminate()
                proc.wait()
                print(f"error: main_ppo ran past --timeout {args.timeout:.0f} s and was stopped; see {out / LOG}")
                return 1
    elapsed = time.time() - start
    if rc != 0:
        lines = (out / LOG).read_text(errors="replace").splitlines()
        print("\n".join(lines[-25:]))
        refusal = refusal_line(lines)
        if refusal:
            print(f"refused: {refusal}")
        print(f"error: main_ppo exited with status {rc}; full log: {out / LOG}")
        return rc
    png = plot(read_metrics(metrics_path), out / CURVES)
    print(f"done: {shown} steps in {elapsed:.0f} s (start-up included); metrics {metrics_path}; curves {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
