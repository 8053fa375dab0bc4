# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Rhythm capture on a GPU: exactness against dense references, and its overhead at long N. No verl, no hub.

Needs only torch and transformers (run from the repository root; ``verl_rhythm.measure`` imports neither verl nor
anything else). Models are random and built in-process; ``--smollm2 DIR`` adds the converted SmolLM2 folder.

1. Exactness (fp32 and bf16 inputs), on a tiny random Llama with GQA and head dim 64, for a packed row of unequal
   sequences, a left-padded batch and unpadded rows:
   - ``chunked`` (the per-sequence path) and ``batched`` (the training path), the hook on an eager forward,
     vs the dense reference on the same forward's ``output_attentions`` maps (fp32) and vs float64 maps recomputed
     from the q/k the hook saw (both dtypes);
   - the SDPA forward with the fused path asked for (``RhythmCapture(fused=True)``; the default on CPU, opt-in on
     CUDA until this row shows its parity there): unpadded fp32 rows take it (log-sum-exp and expected position from
     the device's kernel; on CPU fp32 masked batches too), the rest and bf16 the batched path; vs the same
     references; its logits must equal the stock SDPA forward's (``logits_vs_stock``: the parity that would make it
     a CUDA default).
2. Overhead, one sequence: a SmolLM2-shaped random Llama (30 layers, 9 heads / 3 kv heads, hidden 576) in fp32 and
   bf16: SDPA forward alone vs with capture, at each ``--sizes`` N (default 2048 8192); ratio, time inside
   ``record()``, the capture step's extra peak memory (``torch.cuda.max_memory_allocated``) vs the dense maps' size.
3. Training regime: Qwen3-8B shapes (hidden 4096, 32 heads / 8 kv heads, head dim 128, MLP 12288; random weights,
   ``--regime-layers`` layers), bf16, micro-batches ``--regime`` (default 16x1024 and 2x8192) as one packed row
   through ``flash_attention_2`` when it is installed (on CPU: verl-rhythm's CPU flash-attn, strict), else as rows of
   equal length through SDPA. The batched
   capture is checked against float64 maps of its own q/k (one head at a time) and timed against the stock forward;
   the overhead is also scaled to the full 36-layer model with 5 captured layers (the target: at most 2 %). On
   CUDA the default capture (the fused Triton kernels where Triton is installed) is also timed against the batched
   path and, on that path, against the other bf16 full-row mode (``Kernels.low_precision_grid``: fp32-output gemm vs
   fp32 grid through the attention kernel) and the other band schedule (``Kernels.tiled_bands``: tiles vs the block
   loop), to settle the defaults (:mod:`verl_rhythm.measure.kernels`).

Usage (a GPU machine): ``bash benchmarks/gpu_check.sh``; CPU dry run in a reduced size: ``python
benchmarks/gpu_check.py --device cpu --sizes 512 --regime 4x256 --regime-scale 16``. Exit status 1 if an exactness
check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.capture import capture_step_fn, cuda_missing, fix_malloc, grab_qkv, peak_bytes, timed  # noqa: E402
from verl_rhythm.config import RhythmConfig  # noqa: E402
from verl_rhythm.measure.capture import (  # noqa: E402
    RhythmCapture,
    SequenceLayout,
    layouts_from_attention_mask,
    layouts_from_position_ids,
)
from verl_rhythm.measure.heads import rhythm_from_head_stats  # noqa: E402
from verl_rhythm.measure.hook import capture_active, install_attention_hook  # noqa: E402
from verl_rhythm.testing.chunked import ChunkedCapture  # noqa: E402
from verl_rhythm.testing.dense import attention_maps_for_sequence, head_stats_dense, rhythm_dense  # noqa: E402

CFG = RhythmConfig(layers=(1, 2, 4), chunk_size=64)
EPS32 = torch.finfo(torch.float32).eps


class KeepQK:
    """Mixin for a capture: also keep the q/k each selected layer handed over (for a float64 reference)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.qk = {}

    def record(self, layer_idx, query, key, scaling, **kwargs):
        super().record(layer_idx, query, key, scaling, **kwargs)
        if self.wants(layer_idx):
            self.qk[layer_idx] = (query.detach().clone(), key.detach().clone(), scaling)


class QKCapture(KeepQK, RhythmCapture):
    """The capture (its ``batched`` or ``fused`` path), keeping q/k."""


class QKChunked(KeepQK, ChunkedCapture):
    """The per-sequence test path, keeping q/k."""


def llama(device, dtype, *, layers, hidden, heads, kv_heads, inter, vocab, impl, seed=0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=16384,
        tie_word_embeddings=True,
    )
    cfg._attn_implementation = impl
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # sharper attention than at init, so indexing mistakes show
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(6.0)
    return model.to(device=device, dtype=dtype).eval()


def dense64(query, key, scaling, lay):
    """``(H, N, N)`` float64 maps of one layout from the q/k the hook saw."""
    cols = slice(lay.start, lay.start + lay.length)
    q = query[lay.row, :, cols].double()
    k = key[lay.row, :, cols].double().repeat_interleave(query.shape[1] // key.shape[1], 0)
    z = (q @ k.transpose(1, 2)) * scaling
    causal = torch.ones(lay.length, lay.length, dtype=torch.bool, device=z.device).tril()
    return torch.softmax(z.masked_fill(~causal, float("-inf")), -1), float(z.masked_fill(~causal, 0).abs().max())


def errors(capture, cfg, maps_by_layout):
    """Largest |capture - reference| over WAAD terms, FAI numerators, per-token WAAD/FAI; and group agreement."""
    worst, same_groups = 0.0, True
    for lay, st, maps in zip(capture.layouts, capture.head_stats(), maps_by_layout, strict=True):
        ref = head_stats_dense(maps, lay.response_mask.to(maps.device), st.heads, cfg.waad_window,
                               cfg.fai_horizon_lo, cfg.fai_horizon_hi)  # fmt: skip
        got_rh = rhythm_from_head_stats(st, cfg.head_quantile)
        ref_rh = rhythm_dense(maps, lay.response_mask.to(maps.device), st.heads, cfg.waad_window, cfg.fai_horizon_lo,
                              cfg.fai_horizon_hi, cfg.head_quantile)  # fmt: skip
        same_groups &= bool(torch.equal(got_rh.local_heads.cpu(), ref_rh.local_heads.cpu()))
        same_groups &= bool(torch.equal(got_rh.global_heads.cpu(), ref_rh.global_heads.cpu()))
        for a, b in ((st.waad, ref.waad), (st.fai_num, ref.fai_num), (got_rh.waad, ref_rh.waad),
                     (got_rh.fai, ref_rh.fai)):  # fmt: skip
            worst = max(worst, float((a.float().cpu() - b.float().cpu()).abs().max()) if a.numel() else 0.0)
    return worst, same_groups


def batches(device):
    g = torch.Generator().manual_seed(7)
    lengths, prompts = [150, 301, 77], [40, 120, 76]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    resp = [torch.arange(n) >= p for n, p in zip(lengths, prompts, strict=True)]
    packed = {
        "inputs": {
            "input_ids": torch.randint(0, 256, pos.shape, generator=g).to(device),
            "position_ids": pos.to(device),
        },
        "layouts": layouts_from_position_ids(pos, resp),
        "columns": [torch.arange(a, a + n) for a, n in zip([0, 150, 451], lengths, strict=True)],
    }
    s = max(lengths)
    mask = torch.zeros(3, s, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, s - n :] = 1
    padded = {
        "inputs": {
            "input_ids": torch.randint(0, 256, (3, s), generator=g).to(device),
            "attention_mask": mask.to(device),
        },
        "layouts": layouts_from_attention_mask(mask, resp),
        "columns": [torch.nonzero(m).flatten() for m in mask],
    }
    rows = {
        "inputs": {"input_ids": torch.randint(0, 256, (3, 140), generator=g).to(device)},
        "layouts": [SequenceLayout(b, 0, 140, torch.arange(140) >= p) for b, p in enumerate(prompts)],
        "columns": [torch.arange(140)] * 3,
    }
    return {"packed": packed, "left_padded": padded, "rows": rows}


def run(model, capture, inputs, attentions=False):
    with torch.no_grad():
        if capture is None:
            return model(**inputs, use_cache=False, output_attentions=attentions)
        capture.reset()
        with capture_active(capture):
            return model(**inputs, use_cache=False, output_attentions=attentions)


def exactness(device, report):
    ok = True
    for dtype in (torch.float32, torch.bfloat16):
        model = llama(device, dtype, layers=6, hidden=256, heads=4, kv_heads=2, inter=512, vocab=256, impl="eager")
        for case, batch in batches(device).items():
            valid = batch["inputs"].get("attention_mask")
            row = {"dtype": str(dtype).split(".")[-1], "case": case}
            # the reference and the batched path on the eager forward, maps from that very forward
            model.set_attn_implementation("eager")
            checks = []
            bound = None
            for path in ("chunked", "batched"):
                cap = (QKChunked if path == "chunked" else QKCapture)(CFG, 6, batch["layouts"], fused=False)
                out = run(model, cap, batch["inputs"], attentions=True)
                ref64 = [[dense64(*cap.qk[layer], lay) for layer in cap.layers] for lay in batch["layouts"]]
                zmax = max(z for per in ref64 for _, z in per)
                maps64 = [torch.cat([m for m, _ in per]) for per in ref64]
                row["zmax"] = zmax
                bound = 1e-5 + EPS32 * zmax * CFG.waad_window
                row[f"{path}_vs_fp64"], g1 = errors(cap, CFG, maps64)
                checks += [row[f"{path}_vs_fp64"] <= bound, g1, cap.paths == dict.fromkeys(cap.layers, path)]
                if dtype == torch.float32:
                    eager = [attention_maps_for_sequence(out.attentions, cap.layers, lay.row, cols.to(device))[0]
                             for lay, cols in zip(batch["layouts"], batch["columns"], strict=True)]  # fmt: skip
                    row[f"{path}_vs_eager_maps"], g2 = errors(cap, CFG, eager)
                    checks += [row[f"{path}_vs_eager_maps"] <= 1e-5, g2]
            # the SDPA forward: fused (fp32) or batched
            model.set_attn_implementation("sdpa")
            stock = run(model, None, batch["inputs"]).logits
            cap2 = QKCapture(CFG, 6, batch["layouts"], fused=True)  # opt-in on CUDA: this row measures its parity
            logits = run(model, cap2, batch["inputs"]).logits
            row["sdpa_paths"] = sorted(set(cap2.paths.values()))
            keep = valid.bool() if valid is not None else torch.ones(logits.shape[:2], dtype=torch.bool, device=device)
            row["logits_vs_stock"] = float((logits[keep].float() - stock[keep].float()).abs().max())
            # the SDPA forward's own q/k (in bf16 they drift from eager's through the earlier layers)
            own64 = [torch.cat([dense64(*cap2.qk[layer], lay)[0] for layer in cap2.layers]) for lay in batch["layouts"]]
            row["sdpa_capture_vs_fp64"], g3 = errors(cap2, CFG, own64)
            checks += [row["sdpa_capture_vs_fp64"] <= max(bound, 5e-5), g3]
            # fp32: unmasked rows, and on CPU also transformers' bool masks (stock SDPA converts them itself)
            fused_expected = dtype == torch.float32 and (case == "rows" or device.type == "cpu")
            if dtype == torch.float32:
                checks.append(row["logits_vs_stock"] <= 1e-4)
            # on CUDA a kernel the build lacks falls back to the batched path (logged): reported, not a failure
            checks.append(row["sdpa_paths"] == ["fused" if fused_expected else "batched"] or device.type != "cpu")
            row["bound"] = bound
            row["ok"] = all(checks)
            ok &= row["ok"]
            report["exactness"].append(row)
            print(json.dumps(row), flush=True)
    return ok


def dense_variant64(query, key, scaling, lay, cfg, *, window=None, softcap=None, sinks=None):
    """The dense reference of one layout with an attention variant, from float64 maps of the given q/k."""
    cols = slice(lay.start, lay.start + lay.length)
    q = query[lay.row, :, cols].double()
    k = key[lay.row, :, cols].double().repeat_interleave(query.shape[1] // key.shape[1], 0)
    z = q @ k.transpose(1, 2) * scaling
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    t = torch.arange(lay.length, device=z.device)
    allowed = t[:, None] >= t[None, :]
    if window:
        allowed &= t[:, None] - t[None, :] < window
    z = z.masked_fill(~allowed, float("-inf"))
    if sinks is not None:  # one more logit per row, dropped after the softmax (gpt-oss)
        sink = sinks.double()[:, None, None].expand(-1, lay.length, 1)
        maps = torch.softmax(torch.cat([z, sink], -1), -1)[..., :-1]
    else:
        maps = torch.softmax(z, -1)
    zmax = float(z.masked_fill(~allowed, 0).abs().max()) if lay.length else 0.0
    heads = [(0, h) for h in range(query.shape[1])]
    resp = lay.response_mask.to(z.device)
    return head_stats_dense(maps, resp, heads, cfg.waad_window, cfg.fai_horizon_lo, cfg.fai_horizon_hi), zmax


KERNEL_CASES = [("bfloat16", "plain"), ("bfloat16", "window"), ("bfloat16", "softcap"), ("bfloat16", "sinks"),
                ("float16", "plain"), ("float32", "plain")]  # fmt: skip
"""(dtype, variant) pairs of the kernels stage: every variant in bf16 (verl's actor dtype), plain fp16 and fp32;
each pair is one Triton compile per kernel."""


def kernels_exactness(device, report, head_dim=128):
    """The fused Triton kernels (``Kernels.triton``, the CUDA default where Triton is installed) against float64
    dense maps of the same q/k: a packed row of sequences crossing the 64-row tile, GQA 4:1 (8 heads, 2 kv), head dim
    ``head_dim``; bf16 in every variant (sliding window, soft-capping, sinks), fp16 and fp32 plain. On CPU tensors
    the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by the wrapper script for a dry run)."""
    from verl_rhythm.measure.kernels import kernels_for

    try:
        import triton  # noqa: F401
    except ImportError:
        report["kernels"].append({"skipped": "triton is not installed"})
        print("kernels: skipped (triton is not installed)", flush=True)
        return True
    cfg = RhythmConfig(layers=(0,), waad_window=4, fai_horizon_lo=3, fai_horizon_hi=40)
    plan = dataclasses.replace(kernels_for(device.type), triton=True)
    lengths, prompts = [130, 45, 1, 70, 8, 200], [5, 44, 0, 29, 8, 50]
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()[:-1]]
    layouts = [SequenceLayout(0, a, n, torch.arange(n) >= p) for a, n, p in zip(starts, lengths, prompts, strict=True)]
    variants = {"plain": {}, "window": {"window": 33}, "softcap": {"softcap": 5.0},
                "sinks": {"sinks": torch.tensor([0.5, 3.0, -1.0, 8.0, 0.0, 2.0, -3.0, 1.0])}}  # fmt: skip
    g = torch.Generator().manual_seed(11)
    ok = True
    for dtype_name, variant in KERNEL_CASES:
        dtype = getattr(torch, dtype_name)
        t0 = time.perf_counter()
        s = sum(lengths)
        q = (torch.randn(1, 8, s, head_dim, generator=g) * 2.0).to(dtype).to(device)
        k = (torch.randn(1, 2, s, head_dim, generator=g) * 2.0).to(dtype).to(device)
        opts = {name: (v.to(device) if isinstance(v, torch.Tensor) else v) for name, v in variants[variant].items()}
        cap = RhythmCapture(cfg, 1, layouts, kernels=plan)
        cap.to(device)
        scaling = head_dim**-0.5 * 4
        cap.record(0, q, k, scaling, sliding_window=opts.get("window"), softcap=opts.get("softcap"),
                   s_aux=opts.get("sinks"))  # fmt: skip
        worst, bound_ok = 0.0, True
        for lay, got in zip(layouts, cap.head_stats(), strict=True):
            ref, zmax = dense_variant64(q, k, scaling, lay, cfg, **opts)
            tol = 1e-5 + 10 * EPS32 * zmax
            for name in ("waad", "fai_num"):
                a, b = getattr(got, name).double().cpu(), getattr(ref, name).double().cpu()
                err = float((a - b).abs().max()) if a.numel() else 0.0
                worst = max(worst, err)
                bound_ok &= err <= tol
        row = {"dtype": dtype_name, "variant": variant, "head_dim": head_dim, "paths": sorted(set(cap.paths.values())),
               "kernels_vs_fp64": worst, "s": time.perf_counter() - t0}  # fmt: skip
        row["ok"] = bound_ok and row["paths"] == ["triton"]
        ok &= row["ok"]
        report["kernels"].append(row)
        print(json.dumps(row), flush=True)
    return ok


QWEN3_8B = dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, inter=12288, vocab=151936, full_layers=36)


def qwen3_shaped(device, layers, scale, impl):
    """A random Qwen3 with Qwen3-8B's shapes divided by ``scale`` (1 on a GPU), ``layers`` layers, bf16."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    s = QWEN3_8B
    cfg = Qwen3Config(
        vocab_size=s["vocab"] // scale,
        hidden_size=s["hidden"] // scale,
        intermediate_size=s["inter"] // scale,
        num_hidden_layers=layers,
        num_attention_heads=max(2, s["heads"] // scale),
        num_key_value_heads=max(1, s["kv_heads"] // scale),
        head_dim=s["head_dim"] if scale == 1 else 32,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


def dense64_per_head(query, key, scaling, lay, cfg, layer):
    """The dense reference of one layout, one head at a time (float64 maps of N² each), as one HeadStats."""
    from verl_rhythm.measure.heads import HeadStats

    parts = []
    group = query.shape[1] // key.shape[1]
    cols = slice(lay.start, lay.start + lay.length)
    causal = torch.ones(lay.length, lay.length, dtype=torch.bool, device=query.device).tril()
    resp = lay.response_mask.to(query.device)
    for h in range(query.shape[1]):
        q = query[lay.row, h, cols].double()
        k = key[lay.row, h // group, cols].double()
        a = torch.softmax((q @ k.T * scaling).masked_fill(~causal, float("-inf")), -1)[None]
        parts.append(head_stats_dense(a, resp, [(layer, h)], cfg.waad_window, cfg.fai_horizon_lo, cfg.fai_horizon_hi))
        del a
    return HeadStats.concat(parts)


def regime_attention(device) -> str:
    """FlashAttention-2 where it runs: the flash_attn package on CUDA; on CPU (the dry run) verl-rhythm's CPU
    implementation of its API, strict (bf16 only, as the CUDA kernels), so the GPU branch runs here too. Else SDPA."""
    if device.type == "cpu":
        from verl_rhythm.backends.cpu.flash_attn import install

        install.install(strict=True)
        return "flash_attention_2"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa"
    return "flash_attention_2"


def regime(device, specs, report, layers, scale, repeats):
    """The training regime at Qwen3-8B shapes: exactness of the batched capture and its overhead."""
    impl = regime_attention(device)
    model = qwen3_shaped(device, layers, scale, impl)
    cfg = RhythmConfig()
    ok = True
    for spec in specs:
        n_seq, length = (int(x) for x in spec.lower().split("x"))
        g = torch.Generator().manual_seed(n_seq)
        resp = [torch.arange(length) >= length // 4 for _ in range(n_seq)]
        if impl == "flash_attention_2":  # one packed row, as verl's remove-padding feeds FlashAttention-2
            pos = torch.arange(length).repeat(n_seq)[None]
            layouts = [SequenceLayout(0, i * length, length, r) for i, r in enumerate(resp)]
            inputs = {"position_ids": pos.to(device)}
        else:
            pos = torch.arange(length).repeat(n_seq, 1)
            layouts = [SequenceLayout(i, 0, length, r) for i, r in enumerate(resp)]
            inputs = {}
        inputs["input_ids"] = torch.randint(0, model.config.vocab_size, pos.shape, generator=g).to(device)
        nl = model.config.num_hidden_layers
        cap = QKCapture(cfg, nl, layouts, fused=False)
        cap.to(device)
        plain = RhythmCapture(cfg, nl, layouts, fused=False)
        plain.to(device)
        row = {"micro_batch": spec, "impl": impl, "layers": nl, "selected": cap.layers, "scale": scale}
        run(model, cap, inputs)
        got = cap.head_stats()
        worst = 0.0
        for i in (0, n_seq - 1):  # two sequences against float64, one head at a time
            for layer in cap.layers:
                q, k, scaling = cap.qk[layer]
                ref = dense64_per_head(q, k, scaling, layouts[i], cfg, layer)
                rows = [j for j, hd in enumerate(got[i].heads) if hd[0] == layer]
                for a, b in ((got[i].waad[rows], ref.waad), (got[i].fai_num[rows], ref.fai_num)):
                    worst = max(worst, float((a.float() - b.float()).abs().max()))
        del cap
        row["batched_vs_fp64"] = worst
        row["exact"] = worst <= 1e-4
        ok &= row["exact"]
        runs = {
            "stock": lambda inputs=inputs: run(model, None, inputs),
            "capture": lambda inputs=inputs, plain=plain: (run(model, plain, inputs), plain.finalize()),
        }
        for fn in runs.values():
            fn()
        times = {k: [] for k in runs}
        for r in range(repeats):
            for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                times[k].append(timed(runs[k], device)[0])
        t0, t1 = min(times["stock"]), min(times["capture"])
        paths = sorted(set(plain.paths.values()))  # the default's (the alternatives below overwrite plain.paths)
        # each default against its alternatives: settles the CUDA defaults (on CPU it only proves the path)
        default = plain.kernels
        batched_path = dataclasses.replace(default, triton=False)
        alternatives = {  # the fused kernels vs the batched path, and each batched-path choice flipped
            "batched": batched_path,
            "batched_fp32_grid" if default.low_precision_grid else "batched_bf16_grid": dataclasses.replace(
                batched_path, low_precision_grid=not default.low_precision_grid
            ),
            "batched_block_loop" if default.tiled_bands else "batched_tiles": dataclasses.replace(
                batched_path, tiled_bands=not default.tiled_bands
            ),
        }
        if not default.triton and importlib.util.find_spec("triton") is not None:
            from verl_rhythm.measure.triton_stats import interpreting

            if device.type != "cpu" or interpreting():  # CPU tensors only in Triton's interpreter (dry run)
                alternatives["triton"] = dataclasses.replace(default, triton=True)
        for label, kernels in alternatives.items():
            plain.kernels = kernels
            try:
                runs["capture"]()
                row[f"ratio_{label}"] = min(timed(runs["capture"], device)[0] for _ in range(repeats)) / t0
            finally:
                plain.kernels = default
        row["default"] = "triton" if default.triton else "batched"
        full = QWEN3_8B["full_layers"]
        extra_full = (t1 - t0) * 5 / len(plain.layers)  # 5 captured layers on the full model
        row.update(t_stock=t0, t_capture=t1, ratio=t1 / t0, paths=paths)
        row["ratio_full_depth_estimate"] = 1 + extra_full / (t0 * full / nl)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            runs["stock"]()
            p0 = torch.cuda.max_memory_allocated(device) - base
            torch.cuda.reset_peak_memory_stats(device)
            runs["capture"]()
            row["extra_peak_MiB"] = (torch.cuda.max_memory_allocated(device) - base - p0) / 2**20
        report["regime"].append(row)
        print(json.dumps(row), flush=True)
    return ok


def overhead(device, sizes, report, smollm2, repeats):
    models = []
    for dtype in (torch.float32, torch.bfloat16):
        if smollm2:
            from transformers import AutoModelForCausalLM

            m = AutoModelForCausalLM.from_pretrained(smollm2, dtype=dtype, attn_implementation="sdpa")
            models.append(("smollm2", dtype, m.to(device).eval()))
        else:
            shape = dict(layers=30, hidden=576, heads=9, kv_heads=3, inter=1536, vocab=49152)
            models.append(("smollm2-shaped random", dtype, llama(device, dtype, impl="sdpa", **shape)))
    cfg = RhythmConfig()
    for name, dtype, model in models:
        for n in sizes:
            row = overhead_one(model, n, cfg, device, repeats)
            row = {"model": name, "dtype": str(dtype).split(".")[-1], **row}
            report["overhead"].append(row)
            print(json.dumps(row), flush=True)
        del model


def overhead_one(model, n, cfg, device, repeats):
    """SDPA forward vs forward with capture on one sequence of ``n`` random tokens; extra peak of a capture step."""
    nl, h = model.config.num_hidden_layers, model.config.num_attention_heads
    ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
    layouts = [SequenceLayout(0, 0, n, torch.arange(n) >= n // 4)]
    cap = RhythmCapture(cfg, nl, layouts)
    runs = {
        "sdpa": lambda: run(model, None, {"input_ids": ids}),
        "capture": lambda: run(model, cap, {"input_ids": ids}),
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {k: [] for k in runs}
    for r in range(repeats):
        for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            times[k].append(timed(runs[k], device)[0])
    t0, t1 = min(times["sdpa"]), min(times["capture"])
    run(model, cap, {"input_ids": ids})
    record_s, paths = cap.seconds, sorted(set(cap.paths.values()))
    layer = cap.layers[len(cap.layers) // 2]
    qkv = grab_qkv(model, {"input_ids": ids}, layer)
    step = {}
    for kind in ("stock", paths[0]):
        fn = capture_step_fn(kind, cfg, nl, layer, qkv["module"], qkv["q"], qkv["k"], qkv["v"], layouts)
        step[kind] = peak_bytes(fn, device)[0]
    del qkv
    extra = max(0, step[paths[0]] - step["stock"])
    maps_all = nl * h * n * n * 4
    return {
        "N": n,
        "paths": paths,
        "t_sdpa": t0,
        "t_capture": t1,
        "ratio": t1 / t0,
        "record_s": record_s,
        "step_extra_peak_MiB": extra / 2**20,
        "forward_peak_MiB": [peak_bytes(runs[k], device)[0] / 2**20 for k in ("sdpa", "capture")],
        "dense_maps_all_layers_GiB": maps_all / 2**30,
        "extra_peak_pct_of_all_maps": 100 * extra / maps_all,
        "extra_peak_pct_of_selected_maps": 100 * extra / (maps_all / nl * len(cap.layers)),
    }


def verdict(report) -> list[str]:
    """One line per CUDA default the figures bear on: confirmed, overturned, or not settled by this run."""
    lines = []
    cuda = report["device"] != "cpu"
    rows = [r for r in report["regime"] if "ratio" in r]

    def say(default, outcome, why):
        lines.append(f"{default}: {outcome} ({why})")

    if not cuda:
        return ["CUDA defaults: not settled (dry run on CPU: the timings and the fused parity are CUDA figures)"]
    if rows and all("ratio_batched" in r for r in rows):
        default = rows[0].get("default")
        faster = [r["ratio"] <= r["ratio_batched"] for r in rows]
        figures = ", ".join(f"{r['micro_batch']}: default {r['ratio']:.3f} vs batched {r['ratio_batched']:.3f}"
                            for r in rows)  # fmt: skip
        if default == "triton":
            say("Kernels.triton=True (the fused Triton kernels on CUDA)", "confirmed" if all(faster) else
                "overturned: the batched path was faster" if not any(faster) else "mixed", figures)  # fmt: skip
        else:
            say("Kernels.triton (CUDA)", "not installed here: batched path measured", figures)
    for key, flag in (("ratio_batched_fp32_grid", "Kernels.low_precision_grid=True"),
                      ("ratio_batched_bf16_grid", "Kernels.low_precision_grid=False"),
                      ("ratio_batched_block_loop", "Kernels.tiled_bands=True"),
                      ("ratio_batched_tiles", "Kernels.tiled_bands=False")):  # fmt: skip
        got = [r for r in rows if key in r and "ratio_batched" in r]
        if got:
            kept = [r["ratio_batched"] <= r[key] for r in got]
            figures = ", ".join(f"{r['micro_batch']}: {r['ratio_batched']:.3f} vs {r[key]:.3f}" for r in got)
            say(flag, "confirmed" if all(kept) else "overturned" if not any(kept) else "mixed", figures)
    fused = [r for r in report["exactness"] if r.get("dtype") == "float32" and r.get("sdpa_paths") == ["fused"]]
    if fused:
        parity = max(r["logits_vs_stock"] for r in fused)
        say("fused=None means CPU only (opt-in on CUDA)",
            "could become a CUDA default: parity holds" if parity <= 1e-4 else "confirmed: parity fails",
            f"fp32 logits vs stock SDPA: {parity:.2e} (bound 1e-4)")  # fmt: skip
    else:
        say("fused=None means CPU only (opt-in on CUDA)", "confirmed",
            "the fused path did not run on CUDA (no kernel with the log-sum-exp for these rows)")  # fmt: skip
    if rows:
        worst = max(r["ratio_full_depth_estimate"] for r in rows)
        say("capture overhead target (<= 2 % at full depth, 5 layers)", "met" if worst <= 1.02 else "missed",
            f"worst estimate {100 * (worst - 1):.2f} %")  # fmt: skip
    return lines


STAGES = ("kernels", "exactness", "regime", "overhead")
"""The stages, in order; each writes ``OUT/<stage>.json`` as it finishes (``OUT/summary.json`` at the end)."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (``tests/test_docs_commands_on_cpu.py`` parses the documented commands)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--regime", nargs="*", default=["16x1024", "2x8192"], help="training-regime micro-batches")
    parser.add_argument("--regime-layers", type=int, default=4, help="layers of the Qwen3-8B-shaped model")
    parser.add_argument("--regime-scale", type=int, default=1, help="divide the Qwen3-8B widths (CPU dry run)")
    parser.add_argument("--kernel-head-dim", type=int, default=128, help="head dim of the kernels stage")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--smollm2", help="a converted SmolLM2 HF folder (else a SmolLM2-shaped random model)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    parser.add_argument("--out", help="a folder: OUT/<stage>.json as each stage finishes, OUT/summary.json")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        fix_malloc()
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(cuda_missing())
    import transformers

    install_attention_hook()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    report = {"torch": torch.__version__, "transformers": transformers.__version__, "triton": triton_version,
              "device": name, "kernels": [], "exactness": [], "overhead": [], "regime": [], "finished": [],
              "seconds": {}}  # fmt: skip
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, triton {triton_version}, "
          f"device {name}", flush=True)  # fmt: skip
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    def save(stage: str, ok: bool, t0: float) -> None:  # each stage's rows reach OUT as soon as it finishes
        report["finished"].append(stage)
        report["seconds"][stage] = round(time.perf_counter() - t0, 1)
        print(f"{stage} {'OK' if ok else 'FAILED'} ({report['seconds'][stage]:.0f}s)", flush=True)
        if out:
            rows = {"device": name, "ok": ok, "seconds": report["seconds"][stage], "rows": report[stage]}
            (out / f"{stage}.json").write_text(json.dumps(rows, indent=1))

    t = time.perf_counter()
    ok = True
    for stage in args.stages:
        t0 = time.perf_counter()
        if stage == "kernels":
            stage_ok = kernels_exactness(device, report, args.kernel_head_dim)
        elif stage == "exactness":
            stage_ok = exactness(device, report)
        elif stage == "regime":
            stage_ok = regime(device, args.regime, report, args.regime_layers, args.regime_scale, args.repeats)
        else:
            overhead(device, args.sizes, report, args.smollm2, args.repeats)
            stage_ok = True
        ok &= stage_ok
        save(stage, stage_ok, t0)
    report["ok"] = ok
    report["verdict"] = verdict(report)
    print("CUDA defaults, as these figures settle them:", flush=True)
    for line in report["verdict"]:
        print("  " + line, flush=True)
    if out:
        summary = {k: report[k] for k in ("torch", "transformers", "triton", "device", "finished", "seconds", "ok",
                                          "verdict")}  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"done in {time.perf_counter() - t:.0f}s: {'OK' if ok else 'FAILED'}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
