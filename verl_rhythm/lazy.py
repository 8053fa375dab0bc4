# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Package namespaces whose names load on first use (PEP 562), so that importing one light submodule (a settings
class) does not import the package's torch-heavy siblings."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def exports(package: str, names: dict[str, str]) -> tuple[list[str], Callable[[str], object]]:
    """``(__all__, __getattr__)`` for ``package``, each name of ``names`` read from its submodule on first use.

    Args:
        package: the package's ``__name__``.
        names: exported name → the submodule (relative to ``package``) that defines it.
    """

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(names), __getattr__
