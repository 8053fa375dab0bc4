# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""General verl backends shipped with verl-rhythm (not part of the method): see :mod:`verl_rhythm.backends.cpu`."""
