"""verl glue room: thin modules, each named after the verl 0.9.1 seam it plugs into.

- :mod:`.plugin`: the ``verl.plugins`` entry point (``verl/__init__.py``).
- :mod:`.core_algos`: the ``rhythm`` estimator (``verl/trainer/ppo/core_algos.py:register_adv_est``).
"""
