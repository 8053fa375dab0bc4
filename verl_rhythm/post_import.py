# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Run a callback right after a module is first imported (a post-import hook), in whichever process imports it.

The ``verl.plugins`` entry point runs in every process that imports verl (launcher, TaskRunner, workers, rollout
servers, reward workers). Importing the trainer or the FSDP engine there just to patch them would pull the whole
training stack into processes that never train. Instead :func:`when_imported` defers each patch to the moment the
target module is imported; if it already is, the callback runs at once.

Mechanism: a :class:`importlib.abc.MetaPathFinder` at the front of ``sys.meta_path`` answers only for the watched
names, asks the other finders for the real spec, and wraps its loader so that ``exec_module`` runs the callbacks after
the module body. Every other import, and every attribute of the real loader, passes through untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType

logger = logging.getLogger(__name__)

Callback = Callable[[ModuleType], None]
OnError = Callable[[ModuleType, Exception], None]

_lock = threading.RLock()
_pending: dict[str, list[tuple[Callback, OnError | None]]] = {}
_failed: dict[str, list[str]] = {}


def when_imported(module_name: str, callback: Callback, *, on_error: OnError | None = None) -> None:
    """Call ``callback(module)`` once ``module_name`` has been imported (now, if it already has been).

    Callbacks of one module run in registration order, after the module body and before the importer sees it. An
    exception in a callback never reaches the ``import`` statement (the module is the importer's, whatever a patch
    does): it is kept in :func:`failed` and handed to ``on_error`` (logged at WARNING level when there is none), and
    the module's remaining callbacks still run. The callbacks of a module whose own body fails to import stay
    pending, for the next try.

    Args:
        module_name: the fully qualified module name, e.g. ``"verl.trainer.ppo.v1.trainer_base"``.
        callback: called with the module object.
        on_error: called with the module and the exception when ``callback`` raises (e.g. to record the patch as
            disabled, :func:`verl_rhythm.glue.seams.record_disabled`).
    """
    with _lock:
        module = sys.modules.get(module_name)
        if module is None:
            _pending.setdefault(module_name, []).append((callback, on_error))
            _ensure_finder()
            return
    _run(module, callback, on_error)


def pending() -> dict[str, int]:
    """Watched module names that were not imported yet, with their number of waiting callbacks."""
    with _lock:
        return {name: len(cbs) for name, cbs in _pending.items() if cbs}


def failed() -> dict[str, list[str]]:
    """Module name → the callbacks that raised on it in this process (``qualname: ExceptionType: message``)."""
    with _lock:
        return {name: list(errors) for name, errors in _failed.items()}


def _run(module: ModuleType, callback: Callback, on_error: OnError | None) -> None:
    try:
        callback(module)
    # the boundary with the importer: whatever a patch raises is recorded and reported here, never raised into the
    # import of the module (which would fail an unrelated program, and lose the callbacks on a retried import)
    except Exception as err:
        what = f"{getattr(callback, '__qualname__', repr(callback))}: {type(err).__name__}: {err}"
        with _lock:
            _failed.setdefault(module.__name__, []).append(what)
        logger.debug("verl-rhythm: traceback of the failed patch of %s", module.__name__, exc_info=True)
        if on_error is None:
            logger.warning("verl-rhythm: the patch of %s failed (%s)", module.__name__, what)
        else:
            on_error(module, err)  # reports it (one line)


def _run_callbacks(module: ModuleType) -> None:
    with _lock:
        callbacks = _pending.pop(module.__name__, [])
    for callback, on_error in callbacks:
        _run(module, callback, on_error)


class _LoaderProxy(importlib.abc.Loader):
    """The real loader, plus the callbacks after ``exec_module``; every other attribute is the real loader's."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        # the real loader stays the module's loader: tools such as inspect.getsource and pkgutil ask it
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        _run_callbacks(module)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self):
        self._resolving: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        with _lock:
            if fullname not in _pending or fullname in self._resolving:
                return None
            self._resolving.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            with _lock:
                self._resolving.discard(fullname)
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            logger.warning("verl-rhythm: cannot watch the import of %s (loader %r)", fullname, spec.loader)
            return spec
        spec.loader = _LoaderProxy(spec.loader)
        return spec


_finder: _PostImportFinder | None = None


def _ensure_finder() -> None:
    global _finder
    if _finder is None:
        _finder = _PostImportFinder()
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
