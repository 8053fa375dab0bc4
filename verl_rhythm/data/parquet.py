# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Write rows in verl's RL parquet format (read back by ``verl/utils/dataset/rl_dataset.py:RLHFDataset``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` (``data_source``, ``prompt``, ``ability``, ``reward_model``, ``extra_info``) with pyarrow,
    creating the folder; returns the expanded path.

    The table goes to a temporary file next to ``path`` that replaces it at the end, so an interrupted run leaves
    either the old file or the new one, never a truncated one.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"{path}: no rows to write")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_train_test(
    parser, args, make: Callable[[int, int], list], to_row: Callable[[Any, str, int], dict], *, knob: str, noun: str
) -> None:
    """The task CLIs' last step: ``train.parquet`` (``args.train_size`` items from seed ``args.seed``) and
    ``test.parquet`` (``args.test_size`` from ``args.seed + 1``) under ``args.out``, one line printed per file.

    Args:
        parser: the CLI's parser; a ``ValueError`` of ``make`` ends the run through ``parser.error`` naming
            ``--{split}-size`` and ``knob``.
        args: the parsed ``--out``, ``--train-size``, ``--test-size`` and ``--seed``.
        make: ``(count, seed) -> items``.
        to_row: ``(item, split, index) -> row`` in verl's RL parquet format.
        knob: the task's own size flag (e.g. ``--max-operand``), named in the error.
        noun: what an item is, for the printed line.
    """
    for split, count, seed in (("train", args.train_size, args.seed), ("test", args.test_size, args.seed + 1)):
        try:
            items = make(count, seed)
        except ValueError as err:
            parser.error(f"--{split}-size/{knob}: {err}")
        path = write_parquet(
            [to_row(item, split, i) for i, item in enumerate(items)], Path(args.out) / f"{split}.parquet"
        )
        print(f"{split}: {count} {noun} -> {path}")
