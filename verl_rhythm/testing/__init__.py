# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Test and benchmark harnesses: verl's engine outside a Ray worker, op counting, and the spec-only references
(``dense.py``: WAAD/FAI from dense maps; ``credit_ref.py``: γ per response). No training run uses them."""
