# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Cost of the rhythm capture on the embedded SmolLM2-135M: time and extra peak memory, as ratios of one run.

For each N (one sequence of N tokens, the spec's 5 middle-third layers, default W/H_lo/H_hi):

- ``sdpa``: the stock SDPA forward (the baseline: verl's old-log-prob forward);
- ``fused``: the same forward under :func:`verl_rhythm.measure.hook.capture_active`, selected layers taking
  log-sum-exp and expected position from their own attention kernel (:mod:`verl_rhythm.measure.fused`);
- ``batched``: the same with ``fused=False`` (full rows recomputed in query chunks by the batched path: one more QKᵀ
  per selected layer, as with FlashAttention-2 or bf16 in training);
- ``dense``: eager attention with ``output_attentions=True`` plus the dense reference, where the maps fit
  (``--dense-max-gib``), i.e. the paper's approach without its second model copy.

Time: the minimum over ``--repeats`` interleaved runs (ratio of minima), the median of the per-round ratios
("paired"), and the ratio of minimal process CPU times (robust to other jobs with ``--threads 1``). On a shared host
the whole forward varies by ±10 % run to run, more than the capture costs; so the capture's share is also estimated
from one selected layer's attention step with and without capture, timed in isolation (interleaved,
``--step-repeats``), times the number of selected layers, over the forward.

Memory: the extra peak of one selected layer's capture step (the replaced SDPA call plus
:meth:`RhythmCapture.record`) over the stock SDPA call on the same q/k/v, measured as peak RSS on CPU
(``/proc/self/clear_refs``, glibc's mmap threshold fixed at 64 KiB so freed buffers leave RSS) or
``torch.cuda.max_memory_allocated`` on CUDA; compared with the size of the dense maps (all layers, as
``output_attentions`` returns them, and the 5 selected layers alone). Also printed: the whole forward's peak with and
without capture, and the largest |Δ| between the fused and batched statistics.

Training regime (``--regime``): packed micro-batches of many sequences, as verl's old-log-prob pass sees them, e.g.
``16x1024`` (16 sequences of 1,024 tokens) and ``2x8192``, in fp32 and bf16 (``--dtypes``). Each capture path of
``--paths`` runs interleaved with the stock forward: ``batched`` (``fused=False``: what FlashAttention-2, bf16 and
eager layers take) and, in fp32, ``fused`` (full rows from the layer's own SDPA call, as verl's fp32 SDPA forward on
CPU takes it). For each row: the forward
with and without the capture (minimum over ``--repeats`` interleaved runs, and the ratio; the ratio of process CPU
times; and, robust to the load of a shared host, the capture's own share of the captured run's wall time, timed
inside :meth:`RhythmCapture.record` / ``finalize`` (synchronous on CPU), as x 1 / (1 - share)), the aten ops of each
forward and the ones the capture adds per selected layer, host syncs the capture adds (``_local_scalar_dense``,
``nonzero``, cross-device copies, counted with a ``TorchDispatchMode``), and the extra peak memory of the forward.
``--layout rows`` (default) feeds the micro-batch as B rows of equal length without a mask, which costs the stock
attention what FlashAttention-2's varlen kernel costs on a packed row (SDPA on one packed row would build an S×S
mask); the capture's work is the same padded grid either way. ``--layout packed`` feeds one packed row with
``position_ids``.

Usage::

    python benchmarks/capture.py                      # N = 1024 2048 4096 8192, CPU, 2 threads
    python benchmarks/capture.py --sizes 256 512 --repeats 1 --paths fused   # quick
    python benchmarks/capture.py --regime 16x1024 2x8192 --dtypes fp32 bf16 --repeats 2   # ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_rhythm.config import RhythmConfig  # noqa: E402
from verl_rhythm.measure import fused as fused_mod  # noqa: E402
from verl_rhythm.measure.capture import RhythmCapture, SequenceLayout  # noqa: E402
from verl_rhythm.measure.hook import capture_active, install_attention_hook  # noqa: E402
from verl_rhythm.testing.dense import attention_maps_for_sequence, rhythm_dense  # noqa: E402
from verl_rhythm.testing.ops import OpCounter  # noqa: E402

GIB = 2**30
CFG_LAYERS: list[int] = []
_libc = None


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MEASURE_THRESHOLD, TIMING_THRESHOLD = 64 * 1024, 32 * 2**20


def cuda_missing() -> str:
    """One line: why ``--device cuda`` cannot run with this interpreter's torch."""
    if torch.version.cuda is None:
        return (f"--device cuda: this Python's torch {torch.__version__} is a CPU build; run with the interpreter of "
                "the CUDA stack (verl[vllm]==0.9.1 installs torch 2.11 with CUDA), or --device cpu")  # fmt: skip
    return f"--device cuda: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (CUDA_VISIBLE_DEVICES?)"


def fix_malloc() -> None:
    """Make freed large buffers leave RSS at once (M_MMAP_THRESHOLD = 64 KiB, no dynamic threshold)."""
    global _libc
    try:
        _libc = ctypes.CDLL("libc.so.6")
        _libc.mallopt(M_MMAP_THRESHOLD, MEASURE_THRESHOLD)
    except OSError:
        _libc = None


def timing_malloc(on: bool) -> None:
    """For timed runs, let glibc serve blocks up to 32 MiB from its heap (about its steady state): with the 64 KiB
    threshold of :func:`fix_malloc` every large tensor is a fresh mmap and page-faults, which slowed a 4 × 256 bf16
    forward from 1.14 s to 1.54 s here, and the capture with it. ``on=False`` goes back to :func:`fix_malloc`'s
    setting."""
    if _libc is not None:
        _libc.mallopt(M_MMAP_THRESHOLD, TIMING_THRESHOLD if on else MEASURE_THRESHOLD)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_bytes(fn, device: torch.device) -> tuple[int, object]:
    """``(peak bytes above the memory held before the call, fn's result)``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, out
    if _libc is not None:
        _libc.malloc_trim(0)
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    out = fn()
    return _status("VmHWM") - base, out


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, out


def forward_fn(model, ids, capture=None):
    def run():
        with torch.no_grad():
            if capture is None:
                return model(input_ids=ids, use_cache=False).logits
            capture.reset()
            with capture_active(capture):
                model(input_ids=ids, use_cache=False)
            return capture.finalize()

    return run


def capture_step_fn(kind, cfg, num_layers, layer, module, q, k, v, layouts):
    """One selected layer's attention call: stock SDPA, or SDPA replaced/followed by the capture."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    capture = None if kind == "stock" else RhythmCapture(cfg, num_layers, layouts, fused=kind == "fused").to(q.device)

    def run():
        with torch.no_grad():
            if kind == "stock":
                return sdpa_attention_forward(module, q, k, v, None, scaling=module.scaling)
            capture.reset()
            res = fused_mod.attention_with_stats(
                sdpa_attention_forward, capture, module, q, k, v, None, scaling=module.scaling
            )
            if res is None:
                out = sdpa_attention_forward(module, q, k, v, None, scaling=module.scaling)
                capture.record(layer, q, k, module.scaling)
            else:
                out, lse, dist, leak = res
                capture.record(layer, q, k, module.scaling, lse=lse, dist=dist, leak=leak)
            return out

    return run


def grab_qkv(model, inputs: dict, layer):
    """The post-RoPE q/k/v the model hands to attention in ``layer`` (for the isolated capture-step measurement)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    got = {}
    stock = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def spy(module, query, key, value, attention_mask, *args, **kwargs):
        if module.layer_idx == layer:
            got.update(module=module, q=query.clone(), k=key.clone(), v=value.clone())
        return stock(module, query, key, value, attention_mask, *args, **kwargs)

    ALL_ATTENTION_FUNCTIONS["sdpa"] = spy
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = stock
    return got


def bench_size(model, n, args, device, cfg, rows):
    L = model.config.num_hidden_layers
    h = model.config.num_attention_heads
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=gen).to(device)
    layouts = [SequenceLayout(0, 0, n, torch.arange(n, device=device) >= n // 4)]
    fused_cap = RhythmCapture(cfg, L, layouts, fused=True)
    batched_cap = RhythmCapture(cfg, L, layouts, fused=False)
    runs = {"sdpa": forward_fn(model, ids)}
    if "fused" in args.paths:
        runs["fused"] = forward_fn(model, ids, fused_cap)
    if "batched" in args.paths:
        runs["batched"] = forward_fn(model, ids, batched_cap)
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}  # process CPU time: less sensitive than wall time to other jobs on the host
    seconds = {name: [] for name in runs}
    results = {}
    for r in range(args.repeats):
        order = list(runs)[r % len(runs) :] + list(runs)[: r % len(runs)]
        for name in order:
            c0 = time.process_time()
            dt, out = timed(runs[name], device)
            cpu[name].append(time.process_time() - c0)
            times[name].append(dt)
            if name != "sdpa":
                seconds[name].append((fused_cap if name == "fused" else batched_cap).seconds)
                results[name] = out
    row = {"N": n, **{f"t_{k}": min(v) for k, v in times.items()}}
    for name in times:
        if name != "sdpa":  # run r of a path against the sdpa run of the same round: less exposed to load drift
            pairs = sorted(a / b for a, b in zip(times[name], times["sdpa"], strict=True))
            row[f"paired_ratio_{name}"] = pairs[len(pairs) // 2]
            row[f"cpu_ratio_{name}"] = min(cpu[name]) / min(cpu["sdpa"])
    for name in ("fused", "batched"):
        if name in seconds:
            row[f"record_s_{name}"] = min(seconds[name])
    if "fused" in results and "batched" in results:
        a, b = results["fused"][0], results["batched"][0]
        row["max_diff_fused_vs_batched"] = max(float((a.waad - b.waad).abs().max()), float((a.fai - b.fai).abs().max()))

    # memory: whole forward, and one selected layer's capture step in isolation
    for name, fn in runs.items():
        row[f"peak_fwd_{name}"] = peak_bytes(fn, device)[0]
    layer = fused_cap.layers[len(fused_cap.layers) // 2]
    qkv = grab_qkv(model, {"input_ids": ids}, layer)
    step, step_t = {}, {}
    kinds = ("stock", *[p for p in ("fused", "batched") if p in args.paths])
    fns = {k: capture_step_fn(k, cfg, L, layer, qkv["module"], qkv["q"], qkv["k"], qkv["v"], layouts) for k in kinds}
    for kind, fn in fns.items():
        step[kind] = min(peak_bytes(fn, device)[0] for _ in range(2))
    for r in range(args.step_repeats):  # interleaved, so load changes hit every kind alike
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            step_t.setdefault(kind, []).append(timed(fns[kind], device)[0])
    del qkv, fns
    row["t_step_stock"] = min(step_t["stock"])
    for kind in step:
        if kind != "stock":
            row[f"extra_peak_{kind}"] = max(0, step[kind] - step["stock"])
            row[f"t_step_{kind}"] = min(step_t[kind])
            # the capture's extra work per forward, from the isolated layer step: layers x (step - stock step)
            extra = len(fused_cap.layers) * (row[f"t_step_{kind}"] - row["t_step_stock"])
            row[f"est_ratio_{kind}"] = 1 + extra / row["t_sdpa"]
    row["dense_maps_all_layers"] = L * h * n * n * 4
    row["dense_maps_selected"] = len(fused_cap.layers) * h * n * n * 4

    if row["dense_maps_all_layers"] <= args.dense_max_gib * GIB:
        model.set_attn_implementation("eager")
        try:

            def dense():
                with torch.no_grad():
                    out = model(input_ids=ids, use_cache=False, output_attentions=True)
                    maps, heads = attention_maps_for_sequence(
                        out.attentions, fused_cap.layers, 0, torch.arange(n, device=device)
                    )
                    return rhythm_dense(maps, layouts[0].response_mask, heads)

            row["t_dense"] = min(timed(dense, device)[0] for _ in range(max(1, args.repeats - 1)))
        finally:
            model.set_attn_implementation("sdpa")
    rows.append(row)
    print_row(row)


def print_row(row):
    n, base = row["N"], row["t_sdpa"]
    parts = [f"N={n:5d}  sdpa {base:7.2f}s"]
    for name in ("fused", "batched", "dense"):
        if f"t_{name}" in row:
            paired = (
                f", paired x{row[f'paired_ratio_{name}']:.3f}, cpu-time x{row[f'cpu_ratio_{name}']:.3f}"
                if f"paired_ratio_{name}" in row
                else ""
            )
            parts.append(f"{name} {row[f't_{name}']:7.2f}s (x{row[f't_{name}'] / base:.3f}{paired})")
    print("  ".join(parts), flush=True)
    for name in ("fused", "batched"):
        if f"extra_peak_{name}" in row:
            extra = row[f"extra_peak_{name}"]
            print(
                f"         {name}: one layer's attention step {row[f't_step_{name}']:.3f}s vs stock "
                f"{row['t_step_stock']:.3f}s -> {len(CFG_LAYERS)} layers add "
                f"{100 * (row[f'est_ratio_{name}'] - 1):.2f}% to the forward",
                flush=True,
            )
            print(
                f"         {name}: record() {row[f'record_s_{name}']:.2f}s, capture-step extra peak "
                f"{extra / 2**20:.1f} MiB = {100 * extra / row['dense_maps_selected']:.3f}% of the 5 layers' maps "
                f"({row['dense_maps_selected'] / GIB:.2f} GiB), {100 * extra / row['dense_maps_all_layers']:.4f}% of "
                f"all layers' maps ({row['dense_maps_all_layers'] / GIB:.1f} GiB); forward peak "
                f"{row[f'peak_fwd_{name}'] / 2**20:.0f} MiB vs sdpa {row['peak_fwd_sdpa'] / 2**20:.0f} MiB",
                flush=True,
            )
    if "max_diff_fused_vs_batched" in row:
        print(f"         max |fused - batched| over WAAD/FAI: {row['max_diff_fused_vs_batched']:.2e}", flush=True)


def regime_batch(n_seq: int, length: int, vocab: int, device, layout: str):
    """Inputs and layouts of a micro-batch of ``n_seq`` random sequences of ``length`` tokens (first quarter prompt)."""
    gen = torch.Generator().manual_seed(n_seq * length)
    resp = [torch.arange(length) >= length // 4 for _ in range(n_seq)]
    if layout == "packed":
        pos = torch.arange(length).repeat(n_seq)[None]
        inputs = {"position_ids": pos.to(device)}
        layouts = [SequenceLayout(0, i * length, length, r) for i, r in enumerate(resp)]
    else:
        pos = torch.arange(length).repeat(n_seq, 1)
        inputs = {}
        layouts = [SequenceLayout(i, 0, length, r) for i, r in enumerate(resp)]
    inputs["input_ids"] = torch.randint(0, vocab, pos.shape, generator=gen).to(device)
    return inputs, layouts


def bench_regime(model, spec: str, dtype: str, args, device, cfg) -> list[dict]:
    """Training-regime rows of one micro-batch ``spec`` = ``"16x1024"``: the stock forward and each capture path.

    The capture paths, interleaved with the stock forward in one run: ``batched`` (``fused=False``: what
    FlashAttention-2, bf16 and eager layers take) and, where the layer's own SDPA call can return the full-row
    statistics (fp32), ``fused``. One stock forward warms up and hands over one selected layer's q/k/v; one untimed
    run of each counts aten ops and host syncs (a ``TorchDispatchMode``) and measures peak memory; then
    ``--repeats`` timed rounds, and ``--step-repeats`` of the isolated layer step (called without a mask: the real
    call for ``--layout rows``, plain causal over the whole row for ``packed``).
    """
    n_seq, length = (int(x) for x in spec.lower().split("x"))
    inputs, layouts = regime_batch(n_seq, length, model.config.vocab_size, device, args.layout)
    paths = [p for p in ("batched", "fused") if p in args.paths and (p == "batched" or dtype == "fp32")]
    captures = {
        path: RhythmCapture(cfg, model.config.num_hidden_layers, layouts, fused=path == "fused") for path in paths
    }
    for capture in captures.values():
        capture.to(device)

    def forward(path, counter=None):
        def run():
            with torch.no_grad(), counter if counter is not None else contextlib.nullcontext():
                if path == "stock":
                    return model(**inputs, use_cache=False, logits_to_keep=1).logits
                capture = captures[path]
                capture.reset()
                with capture_active(capture):
                    model(**inputs, use_cache=False, logits_to_keep=1)
            return captures[path].finalize() if path != "stock" else None  # after the forward: outside the counter

        return run

    names = ["stock", *paths]
    layer = CFG_LAYERS[len(CFG_LAYERS) // 2]
    qkv = grab_qkv(model, inputs, layer)  # also the warm-up forward
    counters = {name: OpCounter() for name in names}
    times, cpu, share, peak = {n: [] for n in names}, {n: [] for n in names}, {n: [] for n in paths}, {}
    for name in names:  # one counted run of each, which also gives its peak memory (untimed: see timing_malloc)
        peak[name] = peak_bytes(forward(name, counters[name]), device)[0]
    timing_malloc(True)
    try:
        for r in range(args.repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                c0 = time.process_time()
                times[name].append(timed(forward(name), device)[0])
                cpu[name].append(time.process_time() - c0)
                if name != "stock":  # the capture's own share of this very run: immune to load drift between runs
                    share[name].append(captures[name].seconds / times[name][-1])
        # one selected layer's attention call in isolation, with and without the capture (interleaved): its extra
        # time x the selected layers over the forward is the capture's cost including, for the fused path, the
        # padded kernel call that replaces the stock one (outside record(), so not in the share above)
        num_layers, module = model.config.num_hidden_layers, qkv["module"]
        step_fns = {
            k: capture_step_fn(k, cfg, num_layers, layer, module, qkv["q"], qkv["k"], qkv["v"], layouts) for k in names
        }
        step_t = {k: [] for k in names}
        for r in range(args.step_repeats):
            for kind in names if r % 2 == 0 else names[::-1]:
                step_t[kind].append(timed(step_fns[kind], device)[0])
    finally:
        timing_malloc(False)
    del qkv, step_fns
    rows = []
    for path in paths:
        capture = captures[path]
        finalize_counter = OpCounter()
        with finalize_counter:
            capture.finalize()
        row = {"micro_batch": spec, "dtype": dtype, "layout": args.layout, "tokens": n_seq * length, "path": path}
        row["t_stock"], row["t_capture"] = min(times["stock"]), min(times[path])
        row["ratio"] = row["t_capture"] / row["t_stock"]
        row["cpu_ratio"] = min(cpu[path]) / min(cpu["stock"])
        row["capture_share"] = min(share[path])
        row["ratio_from_share"] = 1 / (1 - row["capture_share"])
        row["t_step_stock"], row["t_step_capture"] = min(step_t["stock"]), min(step_t[path])
        row["est_ratio"] = 1 + len(capture.layers) * (row["t_step_capture"] - row["t_step_stock"]) / row["t_stock"]
        # what one more attention call per selected layer costs: the floor of any exact capture that cannot take the
        # full-row statistics from the layer's own kernel (bf16, FlashAttention-2, eager)
        row["one_more_attention"] = 1 + len(capture.layers) * row["t_step_stock"] / row["t_stock"]
        row["record_s"] = capture.seconds
        row["paths"] = sorted(set(capture.paths.values()))
        row["ops_stock"], row["ops_capture"] = counters["stock"].ops, counters[path].ops
        row["ops_added_per_layer"] = (row["ops_capture"] - row["ops_stock"]) / len(capture.layers)
        row["syncs_added"] = len(counters[path].syncs) - len(counters["stock"].syncs)
        row["syncs_finalize"] = len(finalize_counter.syncs)
        row["extra_peak_MiB"] = (peak[path] - peak["stock"]) / 2**20
        print(
            f"{spec:>8} {dtype:>4} {args.layout} {path:>7}: forward {row['t_stock']:7.2f}s, with capture "
            f"{row['t_capture']:7.2f}s (x{row['ratio']:.3f}, cpu-time x{row['cpu_ratio']:.3f}, capture's share of its "
            f"run {100 * row['capture_share']:.1f}% -> x{row['ratio_from_share']:.3f}; from the layer step "
            f"{row['t_step_stock']:.3f}s -> {row['t_step_capture']:.3f}s: x{row['est_ratio']:.3f}; one more attention "
            f"per selected layer: x{row['one_more_attention']:.3f}), "
            f"ops {row['ops_stock']} -> "
            f"{row['ops_capture']} (+{row['ops_added_per_layer']:.0f} per layer), syncs added in the forward "
            f"{row['syncs_added']} (finalize: {row['syncs_finalize']}), extra peak {row['extra_peak_MiB']:.0f} MiB, "
            f"paths {row['paths']}",
            flush=True,
        )
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (``tests/test_docs_commands_on_cpu.py`` parses the documented commands)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="one-sequence table (default 1024 2048 4096 8192)")
    parser.add_argument("--regime", nargs="+", default=[], help="training-regime micro-batches, e.g. 16x1024 2x8192")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--layout", default="rows", choices=["rows", "packed"], help="regime micro-batch layout")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", nargs="+", default=["fused", "batched"], choices=["fused", "batched"])
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--step-repeats", type=int, default=6, help="interleaved runs of the isolated layer step")
    parser.add_argument("--dense-max-gib", type=float, default=2.0, help="run dense eager while all maps fit in this")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="write the rows as JSON here")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        fix_malloc()
    from verl_rhythm.embedded import load_embedded

    model, _ = load_embedded(device=args.device, attn_implementation="sdpa")
    install_attention_hook()
    cfg = RhythmConfig(chunk_size=args.chunk_size)
    CFG_LAYERS[:] = RhythmCapture(cfg, model.config.num_hidden_layers).layers
    print(
        f"SmolLM2-135M fp32 on {args.device} ({args.threads} threads), layers "
        f"{RhythmCapture(cfg, model.config.num_hidden_layers).layers}, W={cfg.waad_window}, "
        f"H=[{cfg.fai_horizon_lo}, {cfg.fai_horizon_hi}], chunk {cfg.chunk_size}, min of {args.repeats} runs",
        flush=True,
    )
    rows = []
    sizes = args.sizes if args.sizes is not None else ([] if args.regime else [1024, 2048, 4096, 8192])
    for n in sizes:
        bench_size(model, n, args, device, cfg, rows)
    for dtype in args.dtypes if args.regime else []:
        regime_model = model if dtype == "fp32" else copy.deepcopy(model).to(torch.bfloat16)
        for spec in args.regime:
            rows.extend(bench_regime(regime_model, spec, dtype, args, device, cfg))
        del regime_model
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
