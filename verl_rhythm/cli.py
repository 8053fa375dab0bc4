# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The ``verl-rhythm`` command (also ``python -m verl_rhythm``).

``verl-rhythm analyze`` writes the attention-rhythm report; see ``docs/analyze.md``. Every ``algorithm.rhythm.*``
key is a flag of the same name with dashes (``--top-q 0.3``, ``--layers 10,12,14``), except ``seed``, which is
``--rhythm-seed`` because ``--seed`` is the sampling seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from verl_rhythm.config import BOTTOM_SCORES, GROUP_SCOPES, SIGN_MODES, RhythmConfig, RhythmConfigError
from verl_rhythm.credit.registry import strategy_names
from verl_rhythm.inputs import ArgumentParser, InputError, SettingError, exit_with

_RENAMED = {"seed": "rhythm-seed"}
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def _choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of the choice keys; strategies as registered when the parser is built."""
    return {
        "strategy": strategy_names(),
        "sign": SIGN_MODES,
        "bottom_score": BOTTOM_SCORES,
        "head_group_scope": GROUP_SCOPES,
    }


def _flag(field_name: str) -> str:
    return "--" + _RENAMED.get(field_name, field_name.replace("_", "-"))


def _layers(text: str):
    if text.strip().lower() in ("none", "null", "default", ""):
        return None
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``verl-rhythm``."""
    parser = ArgumentParser(prog="verl-rhythm", description="verl-rhythm tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "analyze",
        help="attention-rhythm report of a causal LM (default: the embedded SmolLM2-135M-Instruct, offline)",
        description="Generate responses, capture the attention rhythm with the trainer's code and write "
        "report.html, summary.json and PNG plots.",
    )
    src = p.add_argument_group("model and prompts")
    src.add_argument("--model", metavar="PATH", help="HF model folder (default: the embedded SmolLM2-135M-Instruct)")
    src.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    src.add_argument("--prompts-file", type=Path, metavar="FILE", help="prompts: .json, .jsonl or text, one a line")
    src.add_argument("--limit", type=int, metavar="N", help="analyse only the first N prompts")
    src.add_argument("--no-chat-template", action="store_true", help="feed raw prompts (base models)")
    gen = p.add_argument_group("generation (greedy unless --sample)")
    gen.add_argument("--max-new-tokens", type=int, default=192, metavar="N", help="response length limit (192)")
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0, metavar="X", help="sampling temperature (1.0)")
    gen.add_argument("--top-p", type=float, default=1.0, metavar="X", help="nucleus share (1.0)")
    gen.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed (0)")
    run = p.add_argument_group("run")
    run.add_argument(
        "--out", type=Path, default=Path("rhythm_report"), metavar="DIR", help="output folder (rhythm_report)"
    )
    run.add_argument("--device", default="auto", help="torch device; auto = cuda if available, else cpu")
    run.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES), help="weight dtype (float32)")
    run.add_argument("--attn-implementation", default="sdpa", metavar="NAME", help="attention the capture hooks (sdpa)")
    run.add_argument("--batch-size", type=int, default=8, metavar="N", help="prompts per generate / capture (8)")
    run.add_argument("--heatmap-window", type=int, default=48, metavar="N", help="heatmap tokens (48)")
    run.add_argument("--peak-radius", type=int, default=2, metavar="N", help="peak local-max half-width (2)")
    run.add_argument("--peak-top-q", type=float, default=0.2, metavar="X", help="top share a peak ranks in (0.2)")
    run.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: torch's, or 1 if the CPU is busy)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=analyze, subparser=p)
    rhythm = p.add_argument_group("strategy settings (algorithm.rhythm.*; defaults as in training)")
    choices = _choices()
    for f in RhythmConfig.fields():
        kind = {"int": int, "float": float, "str": str}.get(type(f.default).__name__, _layers)
        text = f.metadata["help"]
        if f.name in choices:
            metavar = "{" + ",".join(choices[f.name]) + "}"
        else:
            metavar = {int: "N", float: "X", str: "S"}.get(kind, "L1,L2,...")
        default = "null" if f.default is None else f.default
        rhythm.add_argument(
            _flag(f.name),
            dest=f"rhythm_{f.name}",
            type=kind,
            default=argparse.SUPPRESS,
            metavar=metavar,
            help=f"{text} (default: {default})".replace("%", "%%"),
        )
    return parser


def _config_error(parser: argparse.ArgumentParser, err: RhythmConfigError):
    """Exit with the error, prefixed by the flag of the ``algorithm.rhythm`` key it carries."""
    exit_with(parser.prog, f"{_flag(err.key) if err.key else 'strategy settings'}: {err}")


def _rhythm_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RhythmConfig:
    values = {k[len("rhythm_") :]: v for k, v in vars(args).items() if k.startswith("rhythm_")}
    try:
        return RhythmConfig.from_dict(values)
    except RhythmConfigError as e:
        _config_error(parser, e)


def analyze(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``verl-rhythm analyze`` with parsed arguments."""
    from verl_rhythm.analyze.generate import Sampling
    from verl_rhythm.analyze.pipeline import AnalyzeSettings, run_analyze
    from verl_rhythm.analyze.progress import Progress
    from verl_rhythm.analyze.prompts import bundled_problems, problems_from_file, problems_from_strings

    cfg = _rhythm_config(args, parser)
    try:
        problems = problems_from_strings(args.prompt)
        if args.prompts_file is not None:
            problems += problems_from_file(args.prompts_file)
        problems = problems or bundled_problems()
        if args.limit is not None:
            if args.limit < 1:
                raise InputError(f"--limit={args.limit}: must be >= 1")
            problems = problems[: args.limit]
        settings = AnalyzeSettings(
            model=args.model,
            problems=problems,
            sampling=Sampling(args.max_new_tokens, args.sample, args.temperature, args.top_p, args.seed),
            rhythm=cfg,
            out_dir=args.out,
            device=args.device,
            dtype=args.dtype,
            attn_implementation=args.attn_implementation,
            batch_size=args.batch_size,
            use_chat_template=not args.no_chat_template,
            heatmap_window=args.heatmap_window,
            peak_radius=args.peak_radius,
            peak_top_q=args.peak_top_q,
            threads=args.threads,
        )
    except InputError as e:
        exit_with(parser.prog, e)
    except SettingError as e:  # a setting's own check, e.g. temperature=nan; name its flag
        exit_with(parser.prog, f"--{e.name.replace('_', '-')}={e.value}: {e.problem}")
    except ValueError as e:
        exit_with(parser.prog, e)
    try:
        summary = run_analyze(settings, Progress(quiet=args.quiet))
    except RhythmConfigError as e:  # e.g. --layers outside the model, known only once its config is read
        _config_error(parser, e)
    except InputError as e:
        exit_with(parser.prog, e)
    c = summary["coupling"]
    print(f"report: {Path(args.out) / 'report.html'}")
    print(
        f"entropy at WAAD peaks vs average: {_opt(c['entropy_gain_pct'], '{:+.1f} %')}; FAI peak follows a WAAD "
        f"peak: {_opt(c['fai_follows_waad'], '{:.1%}')} (random {_opt(c['fai_follows_waad_random'], '{:.1%}')})"
    )
    return 0


def _opt(x, fmt: str) -> str:
    return "n/a" if x is None else fmt.format(x)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: ``verl-rhythm <command> [options]``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.handler(args, args.subparser)


if __name__ == "__main__":
    sys.exit(main())
