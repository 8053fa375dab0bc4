# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The capture's device is the one verl's engine computes on, also when FSDP2 offloads the parameters to the CPU."""

from __future__ import annotations

import pytest
import torch
from verl.utils import device as verl_device

from verl_rhythm.glue import transformer_impl


@pytest.mark.parametrize(
    ("name", "index", "expected"), [("cuda", 3, "cuda:3"), ("xpu", 1, "xpu:1"), ("cpu", "cpu", "cpu")]
)
def test_the_capture_device_is_verls_not_the_parameters(monkeypatch, name, index, expected):
    """Under FSDP2's ``offload_policy`` the parameters rest on the CPU between forwards; kernels chosen for their
    device would be the CPU's and the layouts copied again inside the forward. verl's ``get_device_name`` /
    ``get_device_id`` (forced here: no accelerator on this machine; the CPU platform answers ``"cpu"`` for both)
    name the device its engine moves every micro-batch to."""
    monkeypatch.setattr(verl_device, "get_device_name", lambda: name)
    monkeypatch.setattr(verl_device, "get_device_id", lambda: index)
    offloaded = torch.nn.Linear(4, 4)  # parameters on the CPU, as FSDP2's CPUOffloadPolicy leaves them
    assert next(offloaded.parameters()).device.type == "cpu"
    assert transformer_impl.engine_device() == torch.device(expected)
