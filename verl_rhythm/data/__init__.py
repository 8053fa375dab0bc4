# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Data for the paper's tasks, in verl's RL parquet format (``data_source``, ``prompt``, ``reward_model``...).

- :mod:`.countdown`: a deterministic Countdown generator (TinyZero protocol, every puzzle solvable) and its reward
  (``python -m verl_rhythm.data.countdown``).
- :mod:`.prepare_math`: DAPO-Math-17K (train) and AIME24/AIME25/AMC23/MATH500/OlympiadBench (eval) from a local
  file or the Hugging Face hub (``python -m verl_rhythm.data.prepare_math``).
- :mod:`.reward`: the ``reward.custom_reward_function`` the recipes use: Countdown and the math eval sets here,
  everything else through verl's own ``default_compute_score``.

GSM8K and MATH are prepared with verl's own scripts (``examples/data_preprocess/gsm8k.py``, ``math_dataset.py``)
and scored by verl; see ``docs/rhythm.md``. Nothing here downloads at import time.
"""
