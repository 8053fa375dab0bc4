# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Which device kernels the capture uses, decided by capability checks, never by catching errors of the real work.

:class:`Kernels` is the capture's plan for one device: keep bf16/fp16 grids (an fp32-output gemm on CUDA) or upcast
them, take the full-row statistics from a flash-style attention kernel that returns the row log-sum-exp, and which
band schedule to run. :func:`kernels_for` reads it off the torch build
(``torch._C._dispatch_has_kernel_for_dispatch_key``) and the device type; a
:class:`~verl_rhythm.measure.capture.RhythmCapture` keeps its own copy (``capture.kernels``), and tests and
benchmarks pass a modified one (``dataclasses.replace``) to run every branch on any device. Whether one call fits a
kernel (head dims, alignment) is a shape check on the host, before the call
(``torch.backends.cuda.can_use_efficient_attention`` on CUDA). Any error a kernel raises, an out-of-memory error
included, reaches the caller.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging

import torch

logger = logging.getLogger(__name__)

_LOW = (torch.bfloat16, torch.float16)
_DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}
_LSE_ATTENTION_OP = {
    "cpu": "aten::_scaled_dot_product_flash_attention_for_cpu",
    "cuda": "aten::_scaled_dot_product_efficient_attention",
}


def _has_kernel(op: str, device_type: str) -> bool:
    key = _DISPATCH_KEY.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The capture's kernel choices on one device.

    Attributes:
        device_type: ``cpu``, ``cuda``, ``meta`` or another accelerator's type (what :func:`kernels_for` was asked
            for).
        low_precision_grid: bf16/fp16 q/k stay in their dtype on the padded grid and every logit comes from
            :meth:`matmul_fp32` (fp32 sums of exact products); ``False`` upcasts the grid to fp32 first.
        fp32_output_gemm: ``torch.bmm(..., out_dtype=torch.float32)`` runs on this device (CUDA); without it
            :meth:`matmul_fp32` upcasts bf16/fp16 operands (the same products, one more copy).
        lse_attention: full rows of fp32 grids (plain causal softmax) come from one call of a flash-style attention
            kernel returning the row log-sum-exp (:meth:`attention_lse`), and the fused path may replace an fp32 SDPA
            call; ``False``: explicit logits in query chunks, and no fused path.
        tiled_bands: band schedule of :func:`verl_rhythm.measure.batched.band_stats`: tiles of many blocks (few
            launches: every accelerator) or the block loop (cache-friendly: CPU).
        triton: every per-head vector of a layer from the fused Triton kernels
            (:mod:`verl_rhythm.measure.triton_stats`: one pass over the keys, no logit in memory, no padded grid)
            instead of the batched path; every attention variant is covered. On CPU tensors only in Triton's
            interpreter (tests).
    """

    device_type: str
    low_precision_grid: bool
    fp32_output_gemm: bool
    lse_attention: bool
    tiled_bands: bool
    triton: bool = False

    def grid_dtype(self, query: torch.Tensor) -> torch.dtype:
        """The dtype of the padded q/k: the query's bf16/fp16 with :attr:`low_precision_grid`, else fp32."""
        return query.dtype if self.low_precision_grid and query.dtype in _LOW else torch.float32

    def matmul_fp32(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """fp32 ``a @ b`` of ``(..., r, d)`` and ``(..., d, w)``, fp32 or bf16/fp16 operands, fp32 products."""
        if a.dtype == torch.float32:
            return torch.matmul(a, b)
        if not self.fp32_output_gemm:
            return torch.matmul(a.float(), b.float())
        shape = (*a.shape[:-2], a.shape[-2], b.shape[-1])
        flat_a, flat_b = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
        return torch.bmm(flat_a, flat_b, out_dtype=torch.float32).view(shape)

    def attention_lse(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, is_causal: bool, scaling: float
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(out (B, H, S, Dv), lse (B, H, S))`` from the device's flash-style attention kernel, or ``None`` where
        the kernel does not take these inputs (decided by checks before the call, never by an error of the call).

        CPU: ``aten._scaled_dot_product_flash_attention_for_cpu`` (GQA by index). CUDA:
        ``aten._scaled_dot_product_efficient_attention`` on kv heads repeated to H and the mask's heads broadcast,
        where ``torch.backends.cuda.can_use_efficient_attention`` accepts them (alignment, head dims).

        Args:
            q: ``(B, H, S, D)`` fp32; k: ``(B, H_kv, S, D)``; v: ``(B, H_kv, S, Dv)``; mask: ``None`` or an additive
                ``(B | 1, 1, S, S)`` mask in q's dtype; is_causal: causal without a mask; scaling: the logit scale.
        """
        if not self.lse_attention or q.dtype != torch.float32 or q.device.type != self.device_type:
            return None
        if q.dim() != 4 or not k.shape[1] or q.shape[1] % k.shape[1]:
            return None
        if q.device.type != "cuda":
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, is_causal, attn_mask=mask, scale=scaling
            )[:2]
        b, h, s, _ = q.shape
        if k.shape[1] != h:
            k, v = k.repeat_interleave(h // k.shape[1], 1), v.repeat_interleave(h // k.shape[1], 1)
        if mask is not None:  # a view: the kernel reads the broadcast heads
            mask = mask.expand(b, h, s, mask.shape[-1])
        params = torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, is_causal, False)
        if not torch.backends.cuda.can_use_efficient_attention(params, False):
            return None
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, mask, True, 0.0, is_causal, scale=scaling
        )[:2]
        return out, lse[..., :s]


def kernels_for(device: torch.device | str) -> Kernels:
    """The default :class:`Kernels` of ``device``, from what this torch build offers there.

    CUDA: the fused Triton kernels where Triton is importable and the GPU is one they are compiled for (NVIDIA sm_80
    and newer; on ROCm, :data:`ROCM_ARCHS`); for the batched path, bf16/fp16 grids with the fp32-output gemm, tiled
    bands, the memory-efficient kernel for fp32 grids. CPU: fp32 grids (no fp32-output bf16 gemm on CPU), the block
    loop, the CPU flash kernel. Other accelerators (NPU, XPU, ...): fp32 grids, tiled bands, explicit logits.
    ``meta``: fp32 grids, the block loop, explicit logits. A CUDA build without one of the CUDA kernels falls back,
    with a warning (once per process).
    """
    kind = torch.device(device).type
    gemm = _has_kernel("aten::bmm.dtype", kind)
    op = _LSE_ATTENTION_OP.get(kind)
    lse = op is not None and _has_kernel(op, kind)
    if kind == "cuda":
        if not gemm:
            warn_once("rhythm capture: this torch build has no fp32-output bf16 gemm on CUDA; bf16 grids are upcast")
        if not lse:
            warn_once("rhythm capture: no memory-efficient attention kernel on CUDA; fp32 rows use explicit logits")
    return Kernels(
        device_type=kind,
        low_precision_grid=kind == "cuda" and gemm,
        fp32_output_gemm=gemm,
        lse_attention=lse,
        tiled_bands=kind not in _HOST_DEVICES,
        triton=kind == "cuda" and _triton_runs_here(),
    )


_HOST_DEVICES = ("cpu", "meta")
"""Device types that get the block-loop band schedule (cache-friendly on a host); every accelerator (CUDA, ROCm,
NPU, XPU, ...) gets the tiled one (few launches)."""


ROCM_ARCHS = ("gfx90a", "gfx942")
"""AMD GPUs (MI200, MI300) the fused Triton kernels are compiled for in the tests (matrix cores, no spills to
memory); other ROCm GPUs get the batched path."""


def _triton_runs_here() -> bool:
    """The fused Triton kernels are the default here: Triton is importable and the GPU is one they are compiled and
    checked for: NVIDIA with bf16 tensor cores (sm_80 and newer), or an AMD GPU of :data:`ROCM_ARCHS` (a ROCm build
    reports ``device_type="cuda"`` and a capability of 9.x for any of its GPUs, so the architecture decides)."""
    if importlib.util.find_spec("triton") is None:
        warn_once("rhythm capture: Triton is not installed; the batched path computes the statistics")
        return False
    if not torch.cuda.is_available():
        return False
    if torch.version.hip is not None:
        arch = torch.cuda.get_device_properties(torch.cuda.current_device()).gcnArchName.split(":")[0]
        if arch not in ROCM_ARCHS:
            warn_once(
                f"rhythm capture: the fused Triton kernels are not compiled for the AMD GPU {arch} (only "
                f"{', '.join(ROCM_ARCHS)}); the batched path computes the statistics"
            )
        return arch in ROCM_ARCHS
    return torch.cuda.get_device_capability() >= (8, 0)


@functools.cache
def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process sees it."""
    logger.warning(message)
