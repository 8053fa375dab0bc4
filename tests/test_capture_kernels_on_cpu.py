# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The capture's GPU-only branches, run on CPU, and its faults.

- Kernel choices come from capability checks (:func:`~verl_rhythm.measure.kernels.kernels_for`); a capture given
  other :class:`~verl_rhythm.measure.kernels.Kernels` runs CUDA's branches here (bf16 grid, tiled bands) and every
  fallback (no attention kernel: explicit logits; a kernel that does not take the call: the stock call and the
  batched path, noted on the capture), all equal to the dense reference.
- Faults surface: an out-of-memory error injected into the capture reaches the caller of the model's forward, and
  the next capture in the process takes the same path with the same ops (nothing was switched off behind its back);
  no ``except`` clause anywhere in the measure package.
- Layout metadata: ``cuda`` and ``cuda:0`` are one device; only host tensors are pinned on the way to CUDA
  (``torch.cuda`` calls replaced, since no GPU is here).
- The layout check without a mask: a packed row whose position ids FlashAttention-2 would read as other sequences
  than the layouts (transformers 5.10's rule) fails at ``finalize``; and the plain causal rule of SDPA/eager calls
  without a mask.
"""

from __future__ import annotations

import dataclasses
import pathlib
import types

import pytest
import torch
from models import tiny_model
from test_capture_batched_on_cpu import (
    assert_rhythm_matches_dense,
    dense_maps,
    dense_reference,
    packed_layouts,
    random_qk,
)

import verl_rhythm.measure
from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure import kernels as kernels_mod
from verl_rhythm.measure.capture import RhythmCapture, SequenceLayout, layouts_from_position_ids
from verl_rhythm.measure.hook import capture_active, install_attention_hook
from verl_rhythm.measure.kernels import Kernels, kernels_for
from verl_rhythm.measure.layout import BatchLayout, canonical_device
from verl_rhythm.testing.ops import OpCounter

CFG = RhythmConfig(layers=(1, 4), chunk_size=16, fai_horizon_hi=20)
CPU = kernels_for("cpu")


def test_capability_checks_on_this_build():
    """The CPU build has the CPU flash kernel and no fp32-output bf16 gemm; no CUDA kernel is registered."""
    assert CPU == Kernels(
        "cpu", low_precision_grid=False, fp32_output_gemm=False, lse_attention=True, tiled_bands=False
    )
    cuda = kernels_for("cuda")  # a CPU build of torch: every CUDA kernel is missing, so nothing is promised
    assert not (cuda.fp32_output_gemm or cuda.lse_attention or cuda.low_precision_grid) and cuda.tiled_bands
    meta = kernels_for("meta")
    assert meta.fp32_output_gemm and not meta.lse_attention  # the meta kernels of bmm.dtype exist
    a, b = torch.randn(3, 8, 16).bfloat16(), torch.randn(3, 16, 5).bfloat16()
    got = CPU.matmul_fp32(a, b)  # no fp32-output gemm here: the upcast gives the same fp32 products
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, a.double().matmul(b.double()).float(), atol=1e-5, rtol=1e-6)
    assert (
        CPU.grid_dtype(a) == torch.float32
        and dataclasses.replace(CPU, low_precision_grid=True).grid_dtype(a) == a.dtype
    )


CHOICES = {
    "cpu": CPU,
    "cuda_bf16_grid_tiled": dataclasses.replace(CPU, low_precision_grid=True, tiled_bands=True),
    "no_attention_kernel": dataclasses.replace(CPU, lse_attention=False),
}


@pytest.mark.parametrize("choice", list(CHOICES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_kernel_choice_equals_the_dense_reference(choice, dtype):
    layouts = packed_layouts([70, 33, 5, 120], [20, 30, 0, 10])
    q, k = random_qk(1, 4, 2, 230, 16, seed=5, dtype=dtype)
    cfg = RhythmConfig(layers=(0,), chunk_size=32, fai_horizon_hi=40)
    capture = RhythmCapture(cfg, 1, layouts, kernels=CHOICES[choice])
    capture.record(0, q, k, 0.25)
    assert capture.kernels is CHOICES[choice]
    for layout, got, rhythm in zip(layouts, capture.head_stats(), capture.finalize(), strict=True):
        ref, zmax = dense_reference(q, k, 0.25, layout, cfg.waad_window, cfg.fai_horizon_lo, cfg.fai_horizon_hi)
        tol = 1e-5 + 10 * torch.finfo(torch.float32).eps * zmax
        for name in ("waad", "fai_num"):
            torch.testing.assert_close(getattr(got, name), getattr(ref, name), atol=tol, rtol=0, msg=name)
        torch.testing.assert_close(got.dist, ref.dist, atol=tol, rtol=1e-5)
        assert torch.equal(got.fai_count, ref.fai_count)
        assert_rhythm_matches_dense(rhythm, dense_maps(q, k, 0.25, layout)[0], layout, ref.heads, cfg, tol)


class RefusingKernels(Kernels):
    """Kernels whose attention kernel turns every call down, as a CUDA build would for shapes it lacks."""

    def attention_lse(self, *args, **kwargs):
        return None


def test_a_call_the_kernel_does_not_take_goes_to_the_batched_path_and_is_noted():
    install_attention_hook()
    model = tiny_model("llama_gqa", attn_implementation="sdpa")
    layouts = [SequenceLayout(b, 0, 40, torch.arange(40) >= 10) for b in range(2)]
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stock = model(input_ids=ids, use_cache=False).logits
    results = {}
    for name, kernels in (("fused", CPU), ("refused", RefusingKernels(**dataclasses.asdict(CPU)))):
        capture = RhythmCapture(CFG, model.config.num_hidden_layers, layouts, kernels=kernels)
        with torch.no_grad(), capture_active(capture):
            logits = model(input_ids=ids, use_cache=False).logits
        results[name] = (capture, logits, capture.finalize())
    fused, refused = results["fused"][0], results["refused"][0]
    assert set(fused.paths.values()) == {"fused"} and fused.fallbacks == []
    assert set(refused.paths.values()) == {"batched"}
    assert len(refused.fallbacks) == 1 and "no fused statistics" in refused.fallbacks[0]  # once for both layers
    assert torch.equal(results["refused"][1], stock)  # the stock call ran instead
    torch.testing.assert_close(results["fused"][1], stock, atol=1e-5, rtol=1e-5)
    for a, b in zip(results["fused"][2], results["refused"][2], strict=True):
        torch.testing.assert_close(a.waad, b.waad, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.fai, b.fai, atol=1e-5, rtol=0)


def _forward(model, ids, pos, capture):
    counter = OpCounter()
    with torch.no_grad(), counter, capture_active(capture):
        model(input_ids=ids, position_ids=pos, use_cache=False)
    capture.finalize()
    return counter.ops, dict(capture.paths)


@pytest.mark.parametrize(
    ("impl", "target"),
    [("eager", "attention_lse"), ("sdpa", "attention_lse"), ("eager_window", "matmul_fp32")],
    ids=["batched_kernel_rows", "fused", "batched_explicit_logits"],
)
def test_out_of_memory_reaches_the_caller_and_changes_nothing_after(monkeypatch, impl, target):
    install_attention_hook()
    if impl == "eager_window":  # a sliding window: full rows from explicit logits (matmuls), not the kernel
        from models import variant_model

        model = variant_model("mistral", attn_implementation="eager")
    else:
        model = tiny_model("llama_gqa", attn_implementation=impl)
    if impl == "sdpa":  # unmasked rows of one sequence each: the fused path
        pos = torch.arange(40).repeat(2, 1)
        layouts = [SequenceLayout(b, 0, 40, torch.arange(40) >= 10) for b in range(2)]
    else:
        pos = torch.cat([torch.arange(40), torch.arange(30)])[None]
        layouts = layouts_from_position_ids(pos, [torch.arange(40) >= 10, torch.arange(30) >= 5])
    ids = torch.randint(0, 128, pos.shape, generator=torch.Generator().manual_seed(1))

    def new_capture():
        return RhythmCapture(CFG, model.config.num_hidden_layers, layouts).to("cpu")

    before = _forward(model, ids, pos, new_capture())
    stock = getattr(Kernels, target)
    calls = []

    def out_of_memory(self, *args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError("injected: CUDA out of memory")

    monkeypatch.setattr(Kernels, target, out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match="injected"):
        _forward(model, ids, pos, new_capture())
    assert calls
    monkeypatch.setattr(Kernels, target, stock)
    after = _forward(model, ids, pos, new_capture())
    assert after == before  # same ops, same path per layer
    assert set(before[1].values()) == {"fused" if impl == "sdpa" else "batched"}


def test_the_measure_package_catches_no_error():
    """Support is decided by checks; an error of the real work, an out-of-memory error included, always surfaces."""
    root = pathlib.Path(verl_rhythm.measure.__file__).parent
    for path in sorted(root.glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            assert not code.strip().startswith("except"), f"{path.name}:{number}: {line.strip()}"


def test_cuda_and_cuda0_are_one_device_and_only_host_tensors_are_pinned(monkeypatch):
    """BatchLayout.to on CUDA. No GPU here: torch.cuda's device query, ``Tensor.pin_memory`` (a copy into a new host
    tensor, as on a GPU machine) and the host-to-device ``Tensor.to`` (which returns what it was handed) are replaced;
    what is checked is what BatchLayout hands them: every index tensor of the layout and its grids, pinned once, the
    pinned copy (same values) sent asynchronously to cuda:0, and the moved tensor kept. A real move to ``meta`` checks
    the same walk without any replacement."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert canonical_device("cuda") == canonical_device("cuda:0") == torch.device("cuda", 0)
    assert canonical_device("cpu") == torch.device("cpu") and canonical_device("cuda:1").index == 1

    def owners(lay):
        return [lay, *lay.grids]

    def values(lay):
        return {(i, n): getattr(o, n).clone() for i, o in enumerate(owners(lay)) for n in o._TENSORS}

    real = BatchLayout(packed_layouts([30, 12, 25], [10, 2, 24]), 10, 20, 64)
    before = values(real)
    assert real.to("meta") is real and real.device == torch.device("meta")
    for i, o in enumerate(owners(real)):
        for n in o._TENSORS:
            on_meta = getattr(o, n)
            assert on_meta.device.type == "meta"
            assert on_meta.shape == before[i, n].shape and on_meta.dtype == before[i, n].dtype

    pinned, moved = [], []

    def pin_memory(self, *args, **kwargs):
        assert self.device.type == "cpu"  # pinning a device tensor raises on a GPU
        copy = self.clone()
        pinned.append(copy)
        return copy

    def to(self, device, *args, **kwargs):
        moved.append((self, torch.device(device), kwargs.get("non_blocking")))
        return self

    lay = BatchLayout(packed_layouts([30, 12, 25], [10, 2, 24]), 10, 20, 64)
    before = values(lay)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    assert lay.to("cuda") is lay and lay.device == torch.device("cuda", 0)
    assert len(pinned) == len(before) == len(moved)
    for (tensor, device, non_blocking), copy in zip(moved, pinned, strict=True):
        assert tensor is copy and device == torch.device("cuda", 0) and non_blocking is True  # the pinned copy
    kept = {id(t) for t in pinned}
    for (i, n), want in before.items():
        got = getattr(owners(lay)[i], n)
        assert id(got) in kept and torch.equal(got, want), f"{type(owners(lay)[i]).__name__}.{n}"
    lay.to("cuda:0")  # the same device: nothing moves again
    lay.to(torch.device("cuda"))
    assert len(moved) == len(before)
    assert all(g.device == torch.device("cuda", 0) for g in lay.grids)


def test_a_cuda_build_without_a_kernel_falls_back_with_one_warning(monkeypatch, caplog):
    """kernels_for on a CUDA build that lacks the fp32-output gemm (forced: the capability check answers no)."""
    monkeypatch.setattr(kernels_mod, "_has_kernel", lambda op, kind: op != "aten::bmm.dtype")
    kernels_mod.warn_once.cache_clear()
    with caplog.at_level("WARNING"):
        first, second = kernels_for("cuda"), kernels_for("cuda:0")
    assert first == second and first.lse_attention and first.tiled_bands
    assert not first.low_precision_grid and not first.fp32_output_gemm
    assert sum("no fp32-output bf16 gemm" in r.message for r in caplog.records) == 1


def _record_packed(pos, layouts, **kwargs):
    q, k = random_qk(1, 4, 2, pos.shape[1], 16, seed=2)
    capture = RhythmCapture(RhythmConfig(layers=(0,), chunk_size=16, fai_horizon_hi=20), 1, layouts)
    capture.record(0, q, k, 0.25, attention_mask=None, **kwargs)
    return capture


def test_flash_attention_segments_from_position_ids_are_checked():
    """transformers 5.10 runs FlashAttention-2 on a packed row as the sequences that start where position_ids == 0:
    layouts that disagree fail at finalize, on the device's answer (no host read during record)."""
    resp = [torch.ones(20, dtype=torch.bool), torch.ones(10, dtype=torch.bool)]
    layouts = [SequenceLayout(0, 0, 20, resp[0]), SequenceLayout(0, 20, 10, resp[1])]
    good = torch.cat([torch.arange(20), torch.arange(10)])[None]
    assert len(_record_packed(good, layouts, position_ids=good).finalize()) == 2
    shifted = torch.cat([torch.arange(20), torch.arange(3, 13)])[None]  # one sequence to FA2, two to the layouts
    with pytest.raises(RuntimeError, match="layouts do not match"):
        _record_packed(shifted, layouts, position_ids=shifted).finalize()
    split = torch.cat([torch.arange(8), torch.arange(12), torch.arange(10)])[None]  # FA2 cuts the first in two
    with pytest.raises(RuntimeError, match="layouts do not match"):
        _record_packed(split, layouts, position_ids=split).finalize()
    cu = torch.tensor([0, 20, 30], dtype=torch.int32)  # precomputed varlen arguments win over position ids
    assert len(_record_packed(shifted, layouts, position_ids=shifted, cu_seq_lens_q=cu).finalize()) == 2
    with pytest.raises(RuntimeError, match="layouts do not match"):
        _record_packed(good, layouts, position_ids=good, cu_seq_lens_q=torch.tensor([0, 30])).finalize()
    # without a mask or position ids a kernel is causal over the whole row: two sequences in it are an error
    with pytest.raises(RuntimeError, match="layouts do not match"):
        _record_packed(good, layouts).finalize()
    rows = [SequenceLayout(0, 0, 30, torch.ones(30, dtype=torch.bool))]
    assert len(_record_packed(good, rows).finalize()) == 1


def test_the_fused_sdpa_replacement_is_the_default_on_cpu_and_opt_in_elsewhere():
    """The fused path replaces a selected layer's SDPA call (its output is the layer's output): on by default only
    where its parity with the stock call is tested (CPU); on CUDA only when asked for (gpu_check measures it)."""
    default = RhythmCapture(RhythmConfig(), 4)
    assert default.fused is None and default.fuses_on("cpu")
    assert (
        not default.fuses_on("cuda") and not default.fuses_on(torch.device("cuda", 1)) and not default.fuses_on("meta")
    )
    assert RhythmCapture(RhythmConfig(), 4, fused=True).fuses_on("cuda")
    assert not RhythmCapture(RhythmConfig(), 4, fused=False).fuses_on("cpu")


@pytest.mark.parametrize(
    ("hip", "arch", "capability", "triton"),
    [
        (None, "", (9, 0), True),  # NVIDIA Hopper
        (None, "", (7, 5), False),  # NVIDIA Turing: no bf16 tensor cores
        ("6.4.0", "gfx942:sramecc+:xnack-", (9, 4), True),  # MI300: compiled in the tests
        ("6.4.0", "gfx90a:sramecc+:xnack-", (9, 0), True),  # MI200: compiled in the tests
        ("6.4.0", "gfx1100", (11, 0), False),  # RDNA3: not compiled for; the batched path
    ],
)
def test_the_triton_default_follows_the_gpus_it_is_compiled_for(monkeypatch, caplog, hip, arch, capability, triton):
    """A ROCm build reports ``device_type == "cuda"`` and a 9.x capability for any AMD GPU: the architecture decides
    (forced: this machine has no GPU; the compile tests cover the named targets)."""
    pytest.importorskip("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: types.SimpleNamespace(gcnArchName=arch))
    monkeypatch.setattr(torch.version, "hip", hip)
    kernels_mod.warn_once.cache_clear()
    with caplog.at_level("WARNING"):
        kernels = kernels_for("cuda")
    assert kernels.triton is triton and kernels.tiled_bands
    assert any("not compiled for the AMD GPU" in r.message for r in caplog.records) == (hip is not None and not triton)


@pytest.mark.parametrize("device", ["cuda", "xpu", "hpu", "mps", "privateuseone"])  # NPU registers as privateuseone
def test_every_accelerator_gets_the_tiled_band_schedule(device):
    """The block loop is for host memory (CPU, and ``meta`` for the memory bound); every accelerator, whatever its
    vendor, gets the tiled schedule (few launches)."""
    assert kernels_for(device).tiled_bands
    assert not kernels_for("cpu").tiled_bands and not kernels_for("meta").tiled_bands
