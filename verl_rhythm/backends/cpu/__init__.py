"""A CPU backend for verl 0.9.1: a ``cpu`` platform and an ``hf`` (transformers) rollout."""
