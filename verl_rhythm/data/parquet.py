"""Write rows in verl's RL parquet format (read back by ``verl/utils/dataset/rl_dataset.py:RLHFDataset``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` (``data_source``, ``prompt``, ``ability``, ``reward_model``, ``extra_info``) with pyarrow,
    creating the folder; returns the expanded path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"{path}: no rows to write")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
