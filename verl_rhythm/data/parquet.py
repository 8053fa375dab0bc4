# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Write rows in verl's RL parquet format (read back by ``verl/utils/dataset/rl_dataset.py:RLHFDataset``)."""

from __future__ import annotations

import os
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
