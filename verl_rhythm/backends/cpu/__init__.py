# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A CPU backend for verl 0.9.1: a ``cpu`` platform and an ``hf`` (transformers) rollout, active only in processes
that select the CPU platform (``VERL_PLATFORM=cpu``; :mod:`.plugin`)."""

import os

PLATFORM_NAME = "cpu"
"""The name under verl's ``PlatformRegistry`` and the value of ``VERL_PLATFORM`` that selects it."""


def requested() -> bool:
    """Whether this process asks for the CPU platform (``VERL_PLATFORM=cpu``; Ray workers inherit it)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME
