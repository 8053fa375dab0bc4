# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Test harness: save the batch every actor update receives, to check end to end what the policy was trained on.

Load it in every verl process with ``VERL_USE_EXTERNAL_MODULES=verl_rhythm.testing.dump_update`` and set
``VERL_RHYTHM_DUMP_DIR``. It wraps ``verl/workers/engine_workers.py:TrainingWorker.train_mini_batch`` (the
``TensorDict`` that ``ActorRolloutRefWorker.update_actor`` hands to the actor after TransferQueue resolved it) and
writes ``update_<call>_rank<r>.pt``: every tensor field as a list of per-row tensors, and ``engine_rank<r>.txt``: the
class of the engine that trained (``TrainingWorker.engine``, e.g. ``FSDPEngineWithLMHead``). Never used by a
training run.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import torch

from verl_rhythm.post_import import when_imported
from verl_rhythm.wrapping import is_wrapped, mark

DUMP_DIR_ENV = "VERL_RHYTHM_DUMP_DIR"
ROW_KEYS = ("prompts", "responses", "input_ids")
CAPTURED = ("rhythm_waad", "rhythm_fai")
_calls = itertools.count()


def _rows(value: torch.Tensor) -> list[torch.Tensor]:
    if value.is_nested:
        return [row.detach().cpu().clone() for row in value.unbind()]
    return [row.detach().cpu().clone() for row in value]


def _dump(data, kind: str = "update") -> None:
    out = Path(os.environ[DUMP_DIR_ENV])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    fields = {k: _rows(v) for k, v in data.items() if isinstance(v, torch.Tensor)}
    torch.save(fields, out / f"{kind}_{next(_calls):03d}_rank{rank}.pt")


def _record_engine(worker) -> None:
    rank = int(os.environ.get("RANK", "0"))
    path = Path(os.environ[DUMP_DIR_ENV]) / f"engine_rank{rank}.txt"
    path.write_text(type(worker.engine).__name__)


def _install(module) -> None:
    stock_train = module.TrainingWorker.train_mini_batch
    stock_infer = module.TrainingWorker.infer_batch
    if is_wrapped(stock_train):
        return

    @functools.wraps(stock_train)
    def train_mini_batch(self, data, *args, **kwargs):
        if os.environ.get(DUMP_DIR_ENV):
            _dump(data)
            _record_engine(self)
        return stock_train(self, data, *args, **kwargs)

    @functools.wraps(stock_infer)
    def infer_batch(self, data, *args, **kwargs):
        rows = {k: data[k] for k in ROW_KEYS if k in data.keys()}  # read before the engine consumes the batch
        out = stock_infer(self, data, *args, **kwargs)
        if os.environ.get(DUMP_DIR_ENV) and out is not None and any(k in out.keys() for k in CAPTURED):
            _dump({**rows, **{k: out[k] for k in out.keys()}}, kind="capture")
        return out

    module.TrainingWorker.train_mini_batch = mark(train_mini_batch, stock_train)
    module.TrainingWorker.infer_batch = mark(infer_batch, stock_infer)


when_imported("verl.workers.engine_workers", _install)
