# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The report folder written whole: every artefact goes to a staging folder that replaces ``--out`` at the end.

A rerun into the same ``--out`` therefore leaves no file of the previous run (a ``trace_02.png`` from a run with more
prompts), and an interrupted run leaves the previous report untouched, never a mix of old and new files. The staging
folder sits next to ``--out`` (same file system, so the final renames are atomic) and is removed on failure.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes ``out`` (the previous ``out`` is removed).

    The swap is two renames (old ``out`` aside, staging folder in) and then the removal of the old folder: at no
    moment does ``out`` hold files of two runs.
    """
    out = Path(out).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.staging-{os.getpid()}"
    old = out.parent / f".{out.name}.previous-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        if out.exists():
            os.replace(out, old)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (``null``), so the JSON is strict.

    Walks dicts, lists and tuples with an explicit stack (no recursion limit on deep summaries).
    """
    root = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, float) and not math.isfinite(item):
            container[key] = None
        elif isinstance(item, dict):
            container[key] = item = dict(item)
            stack.extend((item, k) for k in item)
        elif isinstance(item, (list, tuple)):
            container[key] = item = list(item)
            stack.extend((item, i) for i in range(len(item)))
    return root[0]
