"""Test and benchmark harnesses: verl's engine outside a Ray worker. Nothing here is used by a training run."""
