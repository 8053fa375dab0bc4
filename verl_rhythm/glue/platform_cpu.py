"""Seam: ``verl/plugin/platform`` (verl 0.9.1) — a CPU platform, so verl's real FSDP engine runs without a GPU.

verl falls back to its NVIDIA platform when no accelerator is found, and then ``get_device_id()`` calls
``torch.cuda.current_device()``. :class:`PlatformCPU` answers ``"cpu"`` and ``gloo`` instead; with it and a
single-process gloo group, ``FSDPEngineWithLMHead.initialize()`` wraps a model with FSDP2 on CPU and its
``infer_batch`` runs the real micro-batching, forward step and output post-processing. Used by the CPU tests and by
the CPU path of ``benchmarks/gpu_engine_check.py``; the plugin never installs it in a training run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

import torch
from verl.plugin.platform import PlatformBase, platform_manager


class _CPUDeviceModule(ModuleType):
    """``torch.cpu`` plus the memory queries verl makes on its device module (answered with zeros)."""

    _ZERO = ("max_memory_allocated", "max_memory_reserved", "memory_allocated", "memory_reserved")
    _NOOP = ("empty_cache", "reset_peak_memory_stats", "synchronize", "set_device", "manual_seed_all")

    def __getattr__(self, name):
        if name in self._ZERO:
            return lambda *args, **kwargs: 0
        if name in self._NOOP:
            return lambda *args, **kwargs: None
        if name == "mem_get_info":
            return lambda *args, **kwargs: (0, 0)
        return getattr(torch.cpu, name)


_DEVICE_MODULE = _CPUDeviceModule("verl_rhythm_cpu_device")


class PlatformCPU(PlatformBase):
    """verl platform for CPU-only processes: device ``cpu``, backend ``gloo``, no profiler, no IPC."""

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

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None


@contextlib.contextmanager
def cpu_process_group(port: int = 29533) -> Iterator[None]:
    """verl's platform set to :class:`PlatformCPU` and a one-process gloo group, both restored on exit.

    Raises:
        RuntimeError: a default process group already exists in this process.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("cpu_process_group: a torch.distributed process group already exists in this process")
    previous = platform_manager._current_platform
    platform_manager.set_platform(PlatformCPU())
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        dist.init_process_group("gloo", rank=0, world_size=1)
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        platform_manager._current_platform = previous
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
