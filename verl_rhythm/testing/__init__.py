# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Test and benchmark harnesses: verl's engine outside a Ray worker, op counting. No training run uses them."""
