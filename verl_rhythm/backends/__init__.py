"""General verl backends shipped with verl-rhythm (not part of the method): see :mod:`verl_rhythm.backends.cpu`."""
