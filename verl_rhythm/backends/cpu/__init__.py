# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A CPU backend for verl 0.9.1: a ``cpu`` platform and an ``hf`` (transformers) rollout."""
