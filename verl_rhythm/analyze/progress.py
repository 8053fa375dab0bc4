# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Plain progress lines on stderr (``[verl-rhythm 12.3s] ...``), so long CPU runs show where they are."""

from __future__ import annotations

import sys
import time


class Progress:
    """Writes timestamped progress lines to a stream (stderr by default); silent when ``quiet``.

    Args:
        quiet: print nothing.
        stream: where to write; default ``sys.stderr`` at call time.
    """

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        stream = self.stream or sys.stderr
        print(f"[verl-rhythm {time.perf_counter() - self.start:6.1f}s] {message}", file=stream, flush=True)
