# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Loading: the post-import hooks, the pinned verl internals, and ``main_ppo`` composing a one-flag rhythm run."""

import inspect
import os
import subprocess
import sys

import pytest
import yaml

from verl_rhythm import post_import
from verl_rhythm.glue import contract, plugin


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A throw-away package ``rhythm_probe_pkg`` with a submodule ``target`` that defines ``VALUE = 1``."""
    root = tmp_path / "rhythm_probe_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "target.py").write_text("VALUE = 1\n\ndef f():\n    return VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "rhythm_probe_pkg.target"
    for name in [n for n in sys.modules if n.startswith("rhythm_probe_pkg")]:
        del sys.modules[name]


def test_a_hook_runs_after_the_module_body_and_before_the_importer_sees_it(package):
    seen = []
    post_import.when_imported(package, lambda m: seen.append(m.VALUE) or setattr(m, "VALUE", 2))
    assert seen == [] and package in post_import.pending()
    import rhythm_probe_pkg.target as target

    assert seen == [1] and target.VALUE == 2 and target.f() == 2
    assert package not in post_import.pending()
    # the module keeps its real loader: source lookups still work
    assert "def f()" in inspect.getsource(target)
    assert type(target.__loader__).__name__ == "SourceFileLoader"


def test_a_hook_on_an_imported_module_runs_at_once(package):
    import rhythm_probe_pkg.target as target

    seen = []
    post_import.when_imported(package, lambda m: seen.append(m))
    assert seen == [target]


def test_a_failing_hook_is_recorded_and_the_others_still_run(package, caplog):
    """A patch that raises never fails the import (the module is the importer's): it is kept in ``failed()`` and
    handed to ``on_error``, and the module's later hooks still run."""
    reported, seen = [], []

    def boom(module):
        raise RuntimeError("patch failed")

    post_import.when_imported(package, boom, on_error=lambda m, err: reported.append((m.__name__, str(err))))
    post_import.when_imported(package, boom)  # no on_error: a WARNING line
    post_import.when_imported(package, lambda m: seen.append(m.VALUE))
    with caplog.at_level("WARNING", logger="verl_rhythm.post_import"):
        import rhythm_probe_pkg.target as target

    assert target.VALUE == 1 and seen == [1]
    assert reported == [(package, "patch failed")]
    assert post_import.failed()[package] == [f"{boom.__qualname__}: RuntimeError: patch failed"] * 2
    assert [r.getMessage() for r in caplog.records] == [
        f"verl-rhythm: the patch of {package} failed ({boom.__qualname__}: RuntimeError: patch failed)"
    ]
    assert package not in post_import.pending()


def test_hooks_of_a_module_whose_body_fails_wait_for_the_next_import(package, tmp_path):
    """The module's own import error is the importer's; the hooks stay pending and run when a retry succeeds."""
    target = tmp_path / "rhythm_probe_pkg" / "target.py"
    target.write_text("raise ImportError('not yet')\n")
    seen = []
    post_import.when_imported(package, lambda m: seen.append(m.VALUE))
    with pytest.raises(ImportError, match="not yet"):
        import rhythm_probe_pkg.target  # noqa: F401
    assert seen == [] and post_import.pending()[package] == 1
    target.write_text("VALUE = 3\n")
    sys.modules.pop(package, None)
    import importlib

    importlib.invalidate_caches()
    import rhythm_probe_pkg.target  # noqa: F401, F811

    assert seen == [3] and package not in post_import.pending()


def test_the_plugin_registers_the_estimator_and_its_patches():
    import verl.trainer.ppo.v1.trainer_base  # noqa: F401
    import verl.workers.engine  # noqa: F401

    assert plugin.is_loaded()
    imported = [name for name in plugin.OPTIONAL_PATCHES if name in sys.modules]  # where megatron-core is installed
    assert plugin.is_patched() == dict.fromkeys([*plugin.PATCHES, *imported], True)
    assert set(post_import.pending()) <= set(plugin.OPTIONAL_PATCHES) - set(imported)


def test_the_verl_internals_the_glue_relies_on_are_unchanged():
    """On a pinned verl release every hash holds (a mismatch is an error in the table). On another 0.9.x release the
    changed functions are reported and the test skips: the behavioural tests gate (glue/contract.py)."""
    import verl

    diff = contract.changed()
    report = "; ".join(f"{name} ({change}): {contract.PINNED[name][1]}" for name, change in sorted(diff.items()))
    if verl.__version__ not in contract.VERL_VERSIONS:
        pytest.skip(
            f"verl {verl.__version__} (pins from {', '.join(contract.VERL_VERSIONS)}); changed: {report or 'none'}"
        )
    assert diff == {}, f"verl {verl.__version__}: pinned internals differ: {report}"


def test_the_wrapped_trainer_methods_keep_verl_signatures():
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from verl_rhythm.glue import trainer_base

    for name in trainer_base.WRAPPED:
        wrapped, stock = getattr(PPOTrainer, name), trainer_base.stock(PPOTrainer, name)
        assert wrapped is not stock and inspect.signature(wrapped) == inspect.signature(stock), name


@pytest.mark.slow
def test_main_ppo_composes_a_one_flag_rhythm_run():
    """``python -m verl.trainer.main_ppo algorithm.adv_estimator=rhythm --cfg job`` (verl's launcher, no GPU)."""
    cmd = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "algorithm.adv_estimator=rhythm",
        "+algorithm.rhythm.strategy=coupled",
        "+algorithm.rhythm.layers=[4,6,8]",
        "actor_rollout_ref.rollout.n=8",
        "--cfg",
        "job",
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = yaml.safe_load(proc.stdout[proc.stdout.index("actor_rollout_ref:") :])
    algorithm = config["algorithm"]
    assert algorithm["adv_estimator"] == "rhythm"
    assert algorithm["rhythm"] == {"strategy": "coupled", "layers": [4, 6, 8]}
    assert config["trainer"]["use_v1"] is True
