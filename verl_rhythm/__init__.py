# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl-rhythm: attention-guided credit assignment (preplan-and-anchor rhythm, arXiv 2510.13554) for verl.

Rooms: :mod:`verl_rhythm.measure` (attention statistics), :mod:`verl_rhythm.credit` (statistics → γ),
:mod:`verl_rhythm.glue` (verl seams). This top-level module stays import-light: it imports neither torch nor verl.
"""

__version__ = "0.1.0"
