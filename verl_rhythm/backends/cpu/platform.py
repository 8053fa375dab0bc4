# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A ``cpu`` platform for verl 0.9.1 (``verl/plugin/platform/platform_manager.py:PlatformRegistry``).

verl falls back to its NVIDIA platform when no accelerator is found, and then ``get_device_id()`` calls
``torch.cuda.current_device()``. :class:`PlatformCPU` answers ``"cpu"`` and ``gloo`` instead, so verl's real FSDP
engine, its Ray resource pools and its process groups run on CPU-only machines. It is registered under the name
``cpu`` and is chosen only through ``VERL_PLATFORM=cpu``: its availability probe answers ``False``, so verl's
auto-detection never picks it and every other run is unchanged.
"""

from __future__ import annotations

import contextlib
from types import ModuleType

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

from verl_rhythm.backends.cpu import PLATFORM_NAME, requested


class _CPUDeviceModule(ModuleType):
    """``torch.cpu`` plus what verl asks of its device module (``get_torch_device()``) that ``torch.cpu`` lacks.

    Memory statistics of an accelerator allocator answer 0, except ``mem_get_info`` (the host's free and total
    memory); the RNG state is torch's CPU generator, so verl's checkpoints save and restore it.
    """

    _ZERO = ("max_memory_allocated", "max_memory_reserved", "memory_allocated", "memory_reserved")
    _NOOP = (
        "empty_cache",
        "reset_peak_memory_stats",
        "synchronize",
        "set_device",
        "manual_seed_all",
        "ipc_collect",
        "set_per_process_memory_fraction",
    )

    def __getattr__(self, name):
        if name in self._ZERO:
            return lambda *args, **kwargs: 0
        if name in self._NOOP:
            return lambda *args, **kwargs: None
        if name == "mem_get_info":
            return _host_memory
        if name == "get_device_name":
            return lambda *args, **kwargs: "CPU"
        if name == "get_rng_state":
            return lambda *args, **kwargs: torch.get_rng_state()
        if name == "set_rng_state":
            return lambda state, *args, **kwargs: torch.set_rng_state(state)
        return getattr(torch.cpu, name)


def _host_memory(*args, **kwargs) -> tuple[int, int]:
    import psutil

    mem = psutil.virtual_memory()
    return mem.available, mem.total


_DEVICE_MODULE = _CPUDeviceModule("verl_rhythm_cpu_device")


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl platform for CPU-only processes: device ``cpu``, backend ``gloo``, no profiler, no IPC.

    Ray resource pools ask for CPUs (:meth:`ray_resource_name`); a placement-group bundle already reserves the CPU a
    worker runs on, so :meth:`ray_resource_options` adds nothing to the actor's options.
    """

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        """``False``: verl's auto-detection must never pick the CPU; ``VERL_PLATFORM=cpu`` selects it."""
        return False

    def current_device(self) -> str:  # type: ignore[override]  # torch accepts "cpu" wherever an index goes
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CPU_VISIBLE_DEVICES"

    def nvtx_range(self, msg: str):
        return contextlib.nullcontext()

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_resource_options(self, num_gpus: float) -> dict:
        # verl's default, {"resources": {"CPU": n}}, is refused by Ray ("use the 'num_cpus' keyword"); the
        # placement-group bundle ({"CPU": 1}) already holds the CPU, so the actor asks for nothing more.
        return {}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None


def is_selected() -> bool:
    """Whether this process's verl platform is (or, once resolved, will be) the CPU platform."""
    from verl.plugin.platform import platform_manager

    current = platform_manager._current_platform
    if current is not None:
        return isinstance(current, PlatformCPU)
    return requested()
