"""The ``fedmammo`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.logging import RichHandler
from rich.markdown import Markdown

from client.atomic import write_parquet, write_text
from client.feature_store import FeatureStoreError
from server.compare import compare, comparison_markdown
from sim import prepare_cli
from sim.config import ConfigError
from sim.experiment import Experiment, load_experiment
from sim.runner import run_pooled_experiment, write_synthetic_store
from sim.simulate import missing_sites, run_federated_experiment
from sim.sites import DEFAULT_SITES, load_sites
from sim.synthetic import PROFILES

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
console = Console(stderr=True, soft_wrap=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmammo", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write a synthetic ten-site feature store")
    synth.add_argument("--out", required=True, type=Path, help="store root to write")
    synth.add_argument("--fm", nargs="+", default=sorted(PROFILES), choices=sorted(PROFILES))
    synth.add_argument("--scale", type=float, default=1.0, help="fraction of Table 2's counts")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--sites", type=Path, default=DEFAULT_SITES, help="site table (TOML)")
    _add_run_parsers(sub)
    cmp_ = sub.add_parser("compare", help="federated vs pooled, per method × FM × task")
    cmp_.add_argument("--pooled", required=True, type=Path)
    cmp_.add_argument("--federated", required=True, type=Path)
    cmp_.add_argument("--out", required=True, type=Path)
    report = sub.add_parser("report", help="report.md with figures and CSV tables from a results folder")
    report.add_argument("results", type=Path, help="demo-style folder (pooled/, federated/) or a run folder")
    report.add_argument("--out", type=Path, help="report folder (default RESULTS/report)")
    prepare_cli.add_parser(sub)
    demo = sub.add_parser("demo", help="quick experiment pooled and federated, compare, report")
    demo.add_argument("--out", type=Path, default=Path("demo-out"))
    _add_extract_parser(sub)
    return parser


def _add_run_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``pooled`` and ``simulate`` commands: an experiment TOML run into a results folder."""
    pooled = sub.add_parser("pooled", help="run a pooled experiment (Individual, Unified, ...)")
    pooled.add_argument("--config", required=True, type=Path, help="experiment TOML")
    pooled.add_argument("--out", required=True, type=Path, help="results folder")
    pooled.add_argument("--store", type=Path, help="existing feature store (overrides the config)")
    pooled.add_argument("--no-search", action="store_true", help="skip the HP search")
    pooled.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train models on N processes (0: every core; default 1)")
    sim_ = sub.add_parser("simulate", help="run an experiment's methods as federations")
    sim_.add_argument("--config", required=True, type=Path, help="experiment TOML")
    sim_.add_argument("--out", required=True, type=Path, help="results folder")
    sim_.add_argument("--store", type=Path, help="existing feature store (overrides the config)")
    sim_.add_argument("--engine", choices=["inprocess", "ray"], help="override [federated] engine")
    sim_.add_argument("--rounds", type=int, help="override [federated] rounds")
    sim_.add_argument("--resume", action="store_true", help="continue runs from their checkpoints")
    sim_.add_argument("--ray-address", help="existing Ray cluster to attach to (HOST:PORT; implies ray)")
    sim_.add_argument("--jobs", type=int, default=1, metavar="N",
                      help="in-process runs on N processes (0: every core; default 1)")


def _add_extract_parser(sub: argparse._SubParsersAction) -> None:
    """The ``extract`` command: a prepared site's images through an FM into a feature store."""
    ext = sub.add_parser("extract", help="extract a prepared site's FM features into a store (resumable)")
    ext.add_argument("--manifest", required=True, type=Path, help="SITE_DIR/manifest.parquet (from prepare)")
    ext.add_argument("--fm", required=True, help="mammoclip|medclip|gloria|clip|dinov2, or a name + --arch")
    ext.add_argument("--weights", required=True, type=Path, help="the FM's checkpoint file or HF folder")
    ext.add_argument("--out", required=True, type=Path, help="store root (entry in OUT/<fm>/<site>)")
    ext.add_argument("--batch-size", type=int, default=8)
    ext.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ext.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    ext.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    ext.add_argument("--tiny", action="store_true", help="test-size architecture (tests and demos only)")
    ext.add_argument("--arch", help="'hf' or 'open_clip:<model>' for an FM that is not built in")


def _experiment(args: argparse.Namespace) -> Experiment:
    exp = load_experiment(args.config)
    if getattr(args, "store", None):
        exp = replace(exp, data=replace(exp.data, store=str(args.store)))
    if getattr(args, "no_search", False):
        exp = replace(exp, protocol=replace(exp.protocol, search=False))
    if getattr(args, "rounds", None):
        exp = replace(exp, federated=replace(exp.federated, rounds=args.rounds))
    return exp


def _simulate(args: argparse.Namespace, quiet: bool) -> None:
    start = time.perf_counter()
    if getattr(args, "ray_address", None):
        os.environ["RAY_ADDRESS"] = args.ray_address  # `run_ray` hands it to ray.init via Flower
        args.engine = "ray"
    history = run_federated_experiment(_experiment(args), args.out, args.engine, args.resume,
                                       show_progress=not quiet, workers=getattr(args, "jobs", 1))
    console.print(Markdown((args.out / "table3.md").read_text()))
    gone = missing_sites(history)
    if len(gone):
        console.print(f"{len(gone)} site-rounds missing (see metric train_missing/eval_missing)")
    console.print(f"wrote {args.out}/metrics.parquet in {time.perf_counter() - start:.0f} s")


def _compare(pooled: Path, federated: Path, out: Path) -> str:
    table = compare(pd.read_parquet(pooled / "metrics.parquet"),
                    pd.read_parquet(federated / "metrics.parquet"))
    text = "# Federated vs pooled\n\n" + comparison_markdown(table)
    write_parquet(out / "comparison.parquet", table)
    write_text(out / "comparison.md", text)
    return text


def _demo(args: argparse.Namespace, quiet: bool) -> None:
    out = args.out
    args.config, args.store, args.no_search = CONFIGS / "experiments" / "quick.toml", None, False
    args.engine, args.rounds, args.resume = None, None, False
    args.out = out / "pooled"
    _pooled(args, quiet)
    args.store = out / "pooled" / "store"
    args.out = out / "federated"
    _simulate(args, quiet)
    console.print(Markdown(_compare(out / "pooled", out / "federated", out)))
    console.print(f"comparison written to {out / 'comparison.md'}")
    _report(out, None)


def _report(results: Path, out: Path | None) -> None:
    from server.report import build_report  # matplotlib and sklearn load only when reporting

    start = time.perf_counter()
    path = build_report(results, out)
    console.print(f"report written to {path} in {time.perf_counter() - start:.0f} s")


def _pooled(args: argparse.Namespace, quiet: bool) -> None:
    exp = _experiment(args)
    start = time.perf_counter()
    results = run_pooled_experiment(exp, args.out, show_progress=not quiet, workers=getattr(args, "jobs", 1))
    console.print(Markdown("\n".join(results.tables.values())))
    console.print(f"wrote {args.out}/metrics.parquet and table3.md "
                  f"in {time.perf_counter() - start:.0f} s")
    if len(results.hparams):
        console.print(training_summary(results.hparams))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def training_summary(hparams: pd.DataFrame) -> str:
    """One line on where a pooled run's time went, from ``hparams.parquet``'s ``train_s``.

    The models' summed training time (on workers, more than the wall time) and the
    slowest model, which bounds how far more workers can shorten the run.
    """
    slow = hparams.loc[hparams["train_s"].idxmax()]
    return (f"{len(hparams)} models trained in {_duration(hparams['train_s'].sum())} of model time; "
            f"slowest: {slow['fm']} · {slow['task']} · {slow['method']} ({slow['trained_on']}), "
            f"{_duration(slow['train_s'])}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedmammo`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    try:
        if args.command == "synth":
            write_synthetic_store(args.out, load_sites(args.sites), args.fm, args.scale, args.seed,
                                  show_progress=not args.quiet)
            console.print(f"wrote synthetic store {args.out} ({', '.join(args.fm)})")
        elif args.command == "pooled":
            _pooled(args, args.quiet)
        elif args.command == "simulate":
            _simulate(args, args.quiet)
        elif args.command == "compare":
            console.print(Markdown(_compare(args.pooled, args.federated, args.out)))
        elif args.command == "report":
            _report(args.results, args.out)
        elif args.command == "prepare":
            prepare_cli.run(args, console, args.quiet)
        elif args.command == "demo":
            _demo(args, args.quiet)
        elif args.command == "extract":
            from client.extract import extract_site  # torch models load only when extracting

            entry = extract_site(args.manifest, args.fm, args.weights, args.out, batch_size=args.batch_size,
                                 device=args.device, bf16=args.bf16, channels_last=args.channels_last,
                                 tiny=args.tiny, arch=args.arch, show_progress=not args.quiet)
            console.print(f"wrote {entry}")
    except (ConfigError, FeatureStoreError, FileNotFoundError, KeyError, ValueError) as err:
        console.print(f"[bold red]error:[/] {err.args[0] if err.args else err}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
