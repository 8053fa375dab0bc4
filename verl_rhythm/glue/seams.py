# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The seams a drifted verl moved: checked before wrapping, left untouched, recorded, and refused by rhythm runs only.

``setup.py`` allows ``verl>=0.9.1,<0.10``: a patch release may rename a method the glue wraps or change its
parameters. Every installer of :mod:`verl_rhythm.glue` therefore checks its target first (:func:`mismatch`: present,
a plain function, the parameters its wrapper reads still there, every parameter verl added optional) and, when the
check fails, leaves verl's object as it is and calls :func:`record_disabled`, which logs one WARNING line naming verl's
version and the function. No exception of an installer reaches verl's ``import`` statement
(:mod:`verl_rhythm.post_import` records any that does), so a run that does not use rhythm is verl's own run.

A rhythm run refuses with the one line of :func:`refusal`; where:

- at start-up, by :func:`verl_rhythm.glue.checks.check_rhythm_run`
  (:func:`~verl_rhythm.glue.checks.check_seams_at_start_up`, which first imports every watched verl module so that a
  seam of the worker side, e.g. the FSDP engine's ``forward_step``, is checked in the trainer's process too); it
  runs in the wrapped ``PPOTrainer.init`` / ``RayPPOTrainer.__init__``;
- when that wrapped start-up method is itself the seam that moved, at start-up by a guard on the next start-up method
  (``PPOTrainer.__init__`` of the v1 trainer, ``RayPPOTrainer.init_workers`` of the legacy one), which reads only
  the config (:func:`guard`);
- in every case before the first policy update: every trainer wrapper and the ``rhythm`` estimator itself call
  :func:`refuse` first. If verl's ``register_adv_est`` moved, ``rhythm`` is not registered at all and verl 0.9.1's
  ``core_algos.get_adv_estimator_fn`` raises its own ``ValueError("Unknown advantage estimator simply: rhythm")`` in
  the first advantage step (``ray_trainer.compute_advantage``), after the start-up refusal above.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from verl_rhythm.wrapping import is_wrapped, mark

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_disabled: dict[str, str] = {}


class RhythmDisabled(RuntimeError):
    """A rhythm run on a verl whose seams moved (the message is the one line of :func:`refusal`)."""


def verl_version() -> str:
    """The version of the verl in this process (``verl.__version__``; the installed distribution's otherwise)."""
    verl = sys.modules.get("verl")
    version = getattr(verl, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("verl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def record_disabled(seam: str, why: str) -> None:
    """Record that the glue left ``seam`` as verl's own, and log it once (one WARNING line per seam).

    Args:
        seam: the fully qualified verl object, e.g. ``verl.trainer.ppo.v1.trainer_base.PPOTrainer.init``.
        why: what changed, e.g. ``not found`` or ``new required parameter 'extra'``.
    """
    with _lock:
        if seam in _disabled:
            return
        _disabled[seam] = why
    logger.warning(
        "verl-rhythm: verl %s changed %s (%s): left as verl's own; algorithm.adv_estimator=rhythm is disabled",
        verl_version(),
        seam,
        why,
    )


def disabled() -> dict[str, str]:
    """The seams left untouched in this process: ``{seam: why}``, in the order they were found."""
    with _lock:
        return dict(_disabled)


def refusal() -> str | None:
    """The one line a rhythm run stops with (every seam that moved, by name), or ``None`` when none moved here."""
    found = disabled()
    if not found:
        return None
    changes = "; ".join(f"{seam} ({why})" for seam, why in sorted(found.items()))
    return (
        f"verl-rhythm disabled: verl {verl_version()} changed {changes}; "
        "algorithm.adv_estimator=rhythm cannot run (every other estimator runs verl's own code)"
    )


def refuse() -> None:
    """Stop a rhythm run when a seam moved in this process.

    Raises:
        RhythmDisabled: with the line of :func:`refusal`.
    """
    line = refusal()
    if line is not None:
        raise RhythmDisabled(line)


def mismatch(fn: Any, *, reads: Iterable[str] = (), known: Iterable[str] = (), method: bool = False) -> str | None:
    """Why a wrapper cannot wrap ``fn``, or ``None`` when it can.

    A wrapper passes every argument through to the stock function and reads some of them by name
    (:class:`Shape`), so it needs exactly: ``fn`` exists and is a plain function (a class attribute must be one, so
    that the wrapper binds like it), every name of ``reads`` is still a named parameter, and every parameter that is
    not in ``known`` (verl 0.9.1's) is optional (a default, ``*args`` or ``**kwargs``): a required new parameter
    means a contract the wrapper does not know.

    Args:
        fn: the stock object (``inspect.getattr_static`` for class attributes), ``None`` when absent.
        reads: parameter names the wrapper reads.
        known: the parameter names of verl 0.9.1's function (``self`` excluded).
        method: whether ``fn`` is a method (its first parameter is ``self``).
    """
    if fn is None:
        return "not found"
    if method and not inspect.isfunction(fn):
        return f"now a {type(fn).__name__}, not a plain method"
    if not callable(fn):
        return f"now a {type(fn).__name__}, not a function"
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as err:
        return f"signature unreadable: {err}"
    if method:
        params = params[1:]
    named = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    gone = [name for name in reads if name not in named]
    if gone:
        return f"parameter {', '.join(repr(n) for n in gone)} gone"
    known = set(known)
    new = [p.name for p in named.values() if p.name not in known and p.default is p.empty]
    if new:
        return f"new required parameter {', '.join(repr(n) for n in new)}"
    return None


def checked(seam: str, fn: Any, **kwargs) -> bool:
    """:func:`mismatch`, recording ``seam`` as disabled on a mismatch; whether ``fn`` can be wrapped."""
    why = mismatch(fn, **kwargs)
    if why is not None:
        record_disabled(seam, why)
        return False
    return True


class Shape:
    """Reads arguments of a call by parameter name, as the stock function's signature places them (no binding)."""

    def __init__(self, fn: Callable):
        self.signature = inspect.signature(fn)
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._positions = {
            name: i for i, (name, p) in enumerate(self.signature.parameters.items()) if p.kind in positional
        }

    def get(self, name: str, args: tuple, kwargs: dict) -> Any:
        """The argument ``name`` of the call ``fn(*args, **kwargs)`` (its default, or ``None``, when not passed)."""
        if name in kwargs:
            return kwargs[name]
        i = self._positions.get(name)
        if i is not None and i < len(args):
            return args[i]
        param = self.signature.parameters.get(name)
        return None if param is None or param.default is param.empty else param.default


class Call:
    """One call of a wrapped verl function: the stock function, the arguments as passed (readable by name)."""

    __slots__ = ("args", "kwargs", "shape", "stock_fn")

    def __init__(self, stock_fn: Callable, shape: Shape, args: tuple, kwargs: dict):
        self.stock_fn, self.shape, self.args, self.kwargs = stock_fn, shape, args, kwargs

    def __getitem__(self, name: str) -> Any:
        return self.shape.get(name, self.args, self.kwargs)

    def stock(self) -> Any:
        """The stock function called with the arguments exactly as passed (unknown ones included)."""
        return self.stock_fn(*self.args, **self.kwargs)

    def stock_with(self, **replace: Any) -> Any:
        """The stock function called with the arguments as passed, except the named ones (which must be named
        parameters of the stock function) replaced by the given values."""
        args, kwargs = list(self.args), dict(self.kwargs)
        for name, value in replace.items():
            i = self.shape._positions.get(name)
            if name not in kwargs and i is not None and i < len(args):
                args[i] = value
            else:
                kwargs[name] = value
        return self.stock_fn(*args, **kwargs)


def wrap(original: Callable, wrapper: Callable[[Call], Any]) -> Callable:
    """``original`` wrapped so that ``wrapper`` gets each call as a :class:`Call` (marked, signature kept)."""
    shape = Shape(original)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        return wrapper(Call(original, shape, args, kwargs))

    return mark(wrapped, original)


def wrap_method(module: Any, cls_name: str, name: str, wrapper: Callable[[Call], Any], **shape) -> bool:
    """Wrap the method ``module.<cls_name>.<name>`` with ``wrapper`` once it is checked (:func:`checked`, seam
    ``<module>.<cls_name>.<name>``); idempotent. Whether the method is wrapped (now or before); a method that moved
    stays verl's own and is recorded as disabled.

    Args:
        module: the verl module holding the class.
        cls_name: the class's name in it.
        name: the method's name (read with ``inspect.getattr_static``: the class's own attribute).
        wrapper: gets each call as a :class:`Call`.
        **shape: ``reads`` and ``known`` of :func:`mismatch`.
    """
    cls = getattr(module, cls_name, None)
    original = inspect.getattr_static(cls, name, None) if isinstance(cls, type) else None
    if is_wrapped(original):
        return True
    if not checked(f"{module.__name__}.{cls_name}.{name}", original, method=True, **shape):
        return False
    setattr(cls, name, wrap(original, wrapper))
    return True


def is_wrapped_method(module: Any, cls_name: str, name: str) -> bool:
    """Whether ``module.<cls_name>`` holds a verl-rhythm wrapper as its own ``name``."""
    cls = getattr(module, cls_name, None)
    return isinstance(cls, type) and is_wrapped(cls.__dict__.get(name))


def guard(original: Callable, is_rhythm: Callable[[Call], bool]) -> Callable:
    """A start-up guard around ``original``: a call for which ``is_rhythm(call)`` holds (a rhythm run's config) is
    refused before the stock call; every other call is the stock one."""

    def check(call: Call):
        if is_rhythm(call):
            refuse()
        return call.stock()

    return wrap(original, check)
