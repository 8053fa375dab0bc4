# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Shared pytest setup: the tests folder on sys.path (for ``models``), markers, torch threads, Triton's interpreter."""

import os
import sys

# Triton's CPU interpreter for the fused statistics kernels (tests/test_capture_triton_on_cpu.py): Triton reads this
# when it is first imported, so it is set before anything imports it; the GPU compile test runs in a subprocess
# without it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# transformers' own Qwen2.5-VL / Qwen3-VL methods, read before any test builds a verl engine (which patches those
# classes for the whole process): the VLM tests' dense reference runs on them (testing.vlm.transformers_own_classes).
# A transformers without those models (none of the matrix's) leaves the VLM tests to fail on their own imports.
try:
    import verl_rhythm.testing.vlm  # noqa: F401
except ImportError:
    pass


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: runs the embedded SmolLM2 model or a local Ray cluster (minutes on 2 CPU cores); CI runs them"
    )


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (eager attention, fp32) and its tokenizer, loaded once per session."""
    from verl_rhythm.embedded import load_embedded

    return load_embedded(attn_implementation="eager")


@pytest.fixture
def cpu_flash_attn():
    """transformers' ``flash_attention_2`` routed to verl-rhythm's CPU flash-attn (fp32 allowed) for one test; the
    install module, for strict mode. Removed afterwards, so other tests see this machine as it is (no flash-attn)."""
    from verl_rhythm.backends.cpu.flash_attn import install

    install.install(strict=False)
    try:
        yield install
    finally:
        install.uninstall()
