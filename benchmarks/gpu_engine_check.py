# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl's real FSDP or Megatron engine with the rhythm capture, on a GPU (or, to prove the path, on CPU), vs the dense
reference.

For each attention implementation (``sdpa``, ``flash_attention_2``, ``eager``) and each packing mode, the actor's
old-log-prob pass runs through verl 0.9.1's ``FSDPEngineWithLMHead.infer_batch`` (FSDP2 on a one-process group: NCCL
on CUDA, gloo with :class:`verl_rhythm.backends.cpu.platform.PlatformCPU` on CPU) with the rhythm engine's capture on,
and its per-token WAAD/FAI are compared with the dense reference of the same weights (eager attention maps, fp32).

- ``fp32`` runs (``--check-dtype``) of ``sdpa`` and ``eager``: the capture must match the reference (``--atol``):
  pass/fail. FlashAttention-2 takes fp16/bf16 only, so it has no fp32 run.
- ``bf16`` runs (verl's default actor precision, ``--info-dtype``; the only ones of ``flash_attention_2``): the
  deviation from the fp32 reference is reported (bf16 rounding of the forward, not of the capture), and the
  TopQ(FAI) overlap with the reference; such a run fails only on an error or non-finite statistics.
- Cost: the same pass with and without capture, timed in one run (median of ``--repeats``, after a warm-up); the
  ratio is the capture overhead of the old-log-prob pass.

``--engine megatron`` runs verl's ``MegatronEngineWithLMHead`` instead (vanilla mbridge, packed THD rows, TP = PP = 1):
on a GPU with TransformerEngine its decoder layers carry megatron-core's TransformerEngine spec, so the capture's
forward pre-hook on ``core_attention`` reads ``TEDotProductAttention``'s arguments (each run names the core attention
class it met); on CPU the local spec with the CPU backend's core attention. ``--attn`` does not apply there (the
attention is the layer spec's); packed rows only.

The model is a random-weight config built in-process (no download): ``tiny`` (``tests/models.py``'s Qwen2; for
Megatron :func:`verl_rhythm.testing.tiny.save_tiny_model`'s Llama with 8 heads / 2 KV heads) or ``qwen2-0.5b``
(Qwen2-0.5B's shape: 24 layers, 14 heads / 2 KV heads, hidden 896). Results go to stdout and, with
``--out FILE``, to a JSON report rewritten after every run (a run cut short keeps what finished). Exit status 1 when
a check fails. ``--device cuda`` on a Python whose torch has no CUDA stops at once with one line.

On CPU, ``flash_attention_2`` runs through verl-rhythm's CPU implementation of the flash-attn API
(:mod:`verl_rhythm.backends.cpu.flash_attn`, strict mode: fp16/bf16 only, as the CUDA kernels), so the whole GPU path
of this script executes here too.

Usage::

    python benchmarks/gpu_engine_check.py --device cpu --model tiny --lengths 24:40 16:64 --repeats 1   # CPU proof
    bash benchmarks/gpu_engine_check.sh                                                                 # on a GPU
    bash benchmarks/gpu_engine_check.sh --engine megatron     # on a GPU, with megatron-core, mbridge, TransformerEngine
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.capture import cuda_missing  # noqa: E402
from verl_rhythm.config import RhythmConfig  # noqa: E402
from verl_rhythm.glue.tq_fields import FAI, WAAD  # noqa: E402


def model_folder(name: str, out: Path, engine: str = "fsdp") -> Path:
    """Save a random-weight model of shape ``name`` (eager attention config) to ``out``; deterministic."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    if name == "tiny" and engine == "megatron":
        from verl_rhythm.testing.tiny import save_tiny_model

        return save_tiny_model(out, num_layers=3)
    if name == "tiny":
        from models import tiny_model

        model = tiny_model("qwen2", attn_implementation="eager")
    elif name == "qwen2-0.5b":
        torch.manual_seed(0)
        cfg = Qwen2Config(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
        )
        cfg._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        raise SystemExit(f"--model {name!r}: choose tiny or qwen2-0.5b")
    model.save_pretrained(out)
    return out


def make_sequences(lengths: list[tuple[int, int]], vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, vocab, (p,), generator=g), torch.randint(0, vocab, (r,), generator=g), torch.ones(r).long())
        for p, r in lengths
    ]


@contextlib.contextmanager
def process_group(device: str, engine: str = "fsdp"):
    """A one-process group on a free port: gloo with verl's platform set to the CPU one (and, for Megatron, the CPU
    backend's Megatron shims registered), or NCCL on GPU 0."""
    from verl_rhythm.testing.process_group import cpu_process_group, single_process_group

    if device == "cpu":
        backend = contextlib.nullcontext()
        if engine == "megatron":
            from verl_rhythm.testing.megatron import cpu_backend_registered

            backend = cpu_backend_registered()
        with backend, cpu_process_group():
            yield
        return
    torch.cuda.set_device(0)
    with single_process_group("nccl"):
        yield


@contextlib.contextmanager
def flash_attention(device: str):
    """Where FlashAttention-2 comes from: the flash_attn package on CUDA; on CPU verl-rhythm's implementation of
    its API, strict (fp16/bf16 only), installed for the run. Yields the flash-attn version, or None without it."""
    if device == "cpu":
        from verl_rhythm.backends.cpu.flash_attn import install as cpu_flash_attn

        was_installed = cpu_flash_attn.is_installed()
        cpu_flash_attn.install(strict=True)
        try:
            yield "cpu (verl-rhythm)"
        finally:
            if not was_installed:
                cpu_flash_attn.uninstall()
        return
    try:
        import flash_attn
    except ImportError:
        yield None
        return
    yield flash_attn.__version__


def timed_pass(engine, batch, device: str) -> tuple[dict, float]:
    from verl_rhythm.testing.engine import run_log_prob_pass

    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = run_log_prob_pass(engine, batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def top_q_overlap(a: torch.Tensor, b: torch.Tensor, q: float = 0.4) -> float:
    k = max(1, int(q * a.numel() + 0.999999))
    ia, ib = set(a.topk(k).indices.tolist()), set(b.topk(k).indices.tolist())
    return len(ia & ib) / k


def check(args) -> dict:
    from transformers import AutoModelForCausalLM

    from verl_rhythm.testing.engine import dense_rhythm

    cfg = RhythmConfig(chunk_size=args.chunk_size)
    megatron = args.engine == "megatron"
    results = {"device": args.device, "engine": args.engine, "model": args.model, "lengths": args.lengths, "runs": []}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    results["versions"] = {"torch": torch.__version__}
    for mod in ("transformers", "verl", *(["megatron.core", "mbridge", "transformer_engine"] * megatron)):
        results["versions"][mod] = installed_version(mod)
    attns, packing = (["core_attention"], [True]) if megatron else (args.attn, args.packing)
    with (
        tempfile.TemporaryDirectory() as tmp,
        process_group(args.device, args.engine),
        flash_attention(args.device) if not megatron else contextlib.nullcontext("n/a") as fa,
    ):
        results["versions"]["flash_attn"] = fa
        path = model_folder(args.model, Path(tmp), args.engine)
        ref_model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
        ref_model = ref_model.to(args.device).eval()
        sequences = make_sequences(args.lengths, ref_model.config.vocab_size)
        reference = dense_rhythm(ref_model, sequences, cfg)
        del ref_model
        for attn in attns:
            if attn == "flash_attention_2" and fa is None:
                skipped = {"attn": attn, "skipped": "the flash_attn package is not installed (see docs/rhythm.md)"}
                report(args, results, skipped)
                continue
            for dtype in [*args.check_dtype, *args.info_dtype]:
                if attn == "flash_attention_2" and dtype not in ("bf16", "fp16"):
                    continue  # FlashAttention-2 rejects fp32 inputs
                for rmpad in packing:
                    run = {"attn": attn, "dtype": dtype, "use_remove_padding": rmpad}
                    try:
                        run.update(one_run(args, cfg, path, attn, dtype, rmpad, sequences, reference))
                    except Exception as err:  # report every combination, fail at the end
                        run["error"] = f"{type(err).__name__}: {err}"
                    run["check"] = dtype in args.check_dtype
                    finite = "error" not in run and all(
                        math.isfinite(run[k]) for k in ("max_abs_err_waad", "max_abs_err_fai")
                    )
                    if run["check"]:
                        run["ok"] = (
                            finite
                            and run["max_abs_err_waad"] <= args.atol * 10
                            and (run["max_abs_err_fai"] <= args.atol)
                        )
                    else:
                        run["ok"] = finite
                    report(args, results, run)
    results["ok"] = all(r.get("ok", True) for r in results["runs"])
    write(args, results)
    return results


def installed_version(module: str) -> str | None:
    """``module.__version__`` where it imports, else ``None``."""
    import importlib

    try:
        return str(getattr(importlib.import_module(module), "__version__", "?"))
    except ImportError:
        return None


def report(args, results: dict, run: dict) -> None:
    """Print one run and add it to the report on disk at once."""
    print(json.dumps(run), flush=True)
    results["runs"].append(run)
    write(args, results)


def write(args, results: dict) -> None:
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


def one_run(args, cfg, path, attn, dtype, rmpad, sequences, reference) -> dict:
    from verl_rhythm.testing.engine import build_engine, log_prob_batch

    extra = {}
    if args.engine == "megatron":
        from verl_rhythm.testing.megatron import build_megatron_engine, core_attention_classes

        dtypes = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
        engine = build_megatron_engine(str(path), dtype=dtypes[dtype])
        extra["core_attention"] = core_attention_classes(engine)
    else:
        engine = build_engine(str(path), attn_implementation=attn, use_remove_padding=rmpad, param_dtype=dtype)

    def batch(capture):
        return log_prob_batch(
            sequences, capture=capture, use_remove_padding=rmpad, micro_batch_size=args.micro_batch_size
        )

    timed_pass(engine, batch(cfg), args.device)  # warm-up (kernels, allocator)
    with_capture, without = [], []
    out = None
    for _ in range(args.repeats):
        out, t = timed_pass(engine, batch(cfg), args.device)
        with_capture.append(t)
        _, t = timed_pass(engine, batch(None), args.device)
        without.append(t)
    # the engine returns the response positions only (each token at its own position): the reference's [len(p):]
    pairs = [(i, len(p), r) for i, ((p, _, _), r) in enumerate(zip(sequences, reference, strict=True))]
    err_waad = max(float((out[WAAD][i] - r.waad.cpu()[n:]).abs().max()) for i, n, r in pairs)
    err_fai = max(float((out[FAI][i] - r.fai.cpu()[n:]).abs().max()) for i, n, r in pairs)
    overlap = statistics.mean(top_q_overlap(out[FAI][i], r.fai.cpu()[n:]) for i, n, r in pairs)
    del engine
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return {
        **extra,
        "max_abs_err_waad": err_waad,
        "max_abs_err_fai": err_fai,
        "topq_fai_overlap": overlap,
        "seconds_with_capture": statistics.median(with_capture),
        "seconds_without": statistics.median(without),
        "overhead_ratio": statistics.median(with_capture) / statistics.median(without),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (``tests/test_docs_commands_on_cpu.py`` parses the documented commands)."""

    def pair(text: str) -> tuple[int, int]:
        p, r = text.split(":")
        return int(p), int(r)

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--engine",
        choices=("fsdp", "megatron"),
        default="fsdp",
        help="verl's FSDP2 engine, or its Megatron engine (needs megatron-core and mbridge)",
    )
    ap.add_argument("--model", default="qwen2-0.5b", help="tiny | qwen2-0.5b (random weights, no download)")
    ap.add_argument(
        "--lengths",
        type=pair,
        nargs="+",
        default=[(256, 1024), (128, 1536), (512, 768), (64, 2048)],
        help="PROMPT:RESPONSE lengths of the sequences",
    )
    ap.add_argument("--attn", nargs="+", default=["sdpa", "flash_attention_2", "eager"])
    ap.add_argument(
        "--packing",
        nargs="+",
        type=lambda s: s.lower() in ("1", "true", "packed"),
        default=[True, False],
        help="packed (use_remove_padding) and/or padded",
    )
    ap.add_argument("--check-dtype", nargs="*", default=["fp32"])
    ap.add_argument("--info-dtype", nargs="*", default=["bf16"])
    ap.add_argument("--micro-batch-size", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--atol", type=float, default=1e-4, help="FAI tolerance; WAAD (range [0, W]) gets 10x")
    ap.add_argument("--out", type=Path, default=None, help="write the full JSON report to this file")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if len(args.lengths) % args.micro_batch_size:
        raise SystemExit(f"{len(args.lengths)} sequences: a multiple of --micro-batch-size={args.micro_batch_size}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(cuda_missing())
    results = check(args)
    print(json.dumps({"ok": results["ok"], "versions": results["versions"]}))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
