# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``python -m verl_rhythm ...``: the same commands as the ``verl-rhythm`` console script."""

import sys

from verl_rhythm.cli import main

if __name__ == "__main__":
    sys.exit(main())
