# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Test harness: run verl's ``main_ppo`` on the CPU backend in a subprocess and read back what it did.

:func:`run_main_ppo` starts ``python -m verl.trainer.main_ppo`` with the ``rhythm_cpu`` recipe, ``VERL_PLATFORM=cpu``,
verl's ``file`` logger (every step's metrics as JSON lines) and :mod:`verl_rhythm.testing.dump_update` (the batch
every actor update received). Never used by a training run.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from verl_rhythm.quickstart import MAIN_PPO, main_ppo_command
from verl_rhythm.testing.dump_update import CAPTURED, DUMP_DIR_ENV


@dataclass
class RunResult:
    returncode: int
    log: str
    metrics: list[tuple[int, dict]] = field(default_factory=list)
    """``(step, metrics)`` per logged step."""
    dumps: list[dict] = field(default_factory=list)
    """The batches the actor updates received, in call order (rank 0 first within a call), with the WAAD/FAI each
    row was captured with (:func:`load_dumps`)."""
    engines: set[str] = field(default_factory=set)
    """The classes of the engines the actor updates ran on (every rank's)."""

    @property
    def steps(self) -> list[int]:
        return [s for s, _ in self.metrics]


def run_main_ppo(
    out: str | Path,
    model_dir: str | Path,
    data_dir: str | Path,
    overrides: list[str] = (),
    *,
    timeout: float = 900,
    entry: str = MAIN_PPO,
    modules: Sequence[str] = (),
) -> RunResult:
    """Train with ``main_ppo`` into ``out`` (checkpoints under ``out/checkpoints``); returns its log, metrics, dumps.

    Args:
        out: a folder for this run (metrics, dumps, checkpoints, log).
        model_dir: an HF model folder with a tokenizer.
        data_dir: a folder with ``train.parquet`` and ``test.parquet``.
        overrides: further Hydra overrides.
        timeout: seconds before the run is killed (``subprocess.TimeoutExpired``).
        entry: the module run with ``python -m`` (verl's ``main_ppo``, or a recipe's entry point taking the same
            Hydra arguments, e.g. :mod:`verl_rhythm.testing.recipe_trainer`).
        modules: further modules every verl process imports (``VERL_USE_EXTERNAL_MODULES``, added to those the
            variable already lists).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    dump_dir = out / "dumps"
    for old in [*dump_dir.glob("*.pt"), *dump_dir.glob("engine_rank*.txt")] if dump_dir.exists() else []:
        old.unlink()
    cmd = main_ppo_command(model_dir, data_dir, out, list(overrides), entry=entry)
    extra_modules = [m for m in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    env = {
        **os.environ,
        "VERL_PLATFORM": "cpu",
        "VERL_FILE_LOGGER_PATH": str(metrics_path),
        "VERL_USE_EXTERNAL_MODULES": ",".join(["verl_rhythm.testing.dump_update", *extra_modules, *modules]),
        DUMP_DIR_ENV: str(dump_dir),
        "HYDRA_FULL_ERROR": "1",
    }
    proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    (out / "train.log").write_text(log)
    metrics = []
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                metrics.append((int(row["step"]), row["data"]))
    engines = {p.read_text() for p in dump_dir.glob("engine_rank*.txt")} if dump_dir.exists() else set()
    return RunResult(proc.returncode, log, metrics, load_dumps(dump_dir), engines)


def load_dumps(dump_dir: Path) -> list[dict]:
    """The update batches in call order, each row given the WAAD/FAI its old-log-prob pass captured.

    The rhythm fields stop at the advantage step, so an update batch carries no ``rhythm_*`` field (checked here);
    each update row takes WAAD/FAI from the capture dumps of the same step (the latest old-log-prob call before the
    update, every rank's shard), joined on the row's ``input_ids``: the update's rows may be shuffled and split
    across ranks differently from the capture's.
    """
    import torch

    def order(path: Path) -> tuple[int, int]:
        _, call, rank = path.stem.split("_")
        return int(call), int(rank.removeprefix("rank"))

    files = sorted(dump_dir.glob("*.pt"), key=order) if dump_dir.exists() else []
    captured: dict[tuple, dict] = {}
    capture_call = None
    dumps = []
    for path in files:
        data = torch.load(path)
        if path.stem.startswith("capture_"):
            if order(path)[0] != capture_call:
                captured, capture_call = {}, order(path)[0]
            for i, ids in enumerate(data["input_ids"]):
                captured.setdefault(tuple(ids.tolist()), {k: data[k][i] for k in CAPTURED})
            continue
        leaked = [k for k in data if k.startswith("rhythm_")]
        if leaked:
            raise AssertionError(f"{path.name}: the update batch carries {leaked} (they stop at the advantage step)")
        if captured:
            rows = [captured[tuple(ids.tolist())] for ids in data["input_ids"]]
            data.update({k: [row[k] for row in rows] for k in CAPTURED})
        dumps.append(data)
    return dumps
