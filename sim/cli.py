"""The ``fedmammo`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markdown import Markdown

from client.feature_store import FeatureStoreError
from sim.config import ConfigError
from sim.experiment import load_experiment
from sim.runner import run_pooled_experiment, write_synthetic_store
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
    pooled = sub.add_parser("pooled", help="run a pooled experiment (Individual, Unified, ...)")
    pooled.add_argument("--config", required=True, type=Path, help="experiment TOML")
    pooled.add_argument("--out", required=True, type=Path, help="results folder")
    pooled.add_argument("--store", type=Path, help="existing feature store (overrides the config)")
    pooled.add_argument("--no-search", action="store_true", help="skip the HP search")
    demo = sub.add_parser("demo", help="synthesize, run the quick experiment, print Table 3")
    demo.add_argument("--out", type=Path, default=Path("demo-out"))
    return parser


def _pooled(args: argparse.Namespace, quiet: bool) -> None:
    from dataclasses import replace

    exp = load_experiment(args.config)
    if args.store:
        exp = replace(exp, data=replace(exp.data, store=str(args.store)))
    if args.no_search:
        exp = replace(exp, protocol=replace(exp.protocol, search=False))
    start = time.perf_counter()
    results = run_pooled_experiment(exp, args.out, show_progress=not quiet)
    console.print(Markdown("\n".join(results.tables.values())))
    console.print(f"wrote {args.out}/metrics.parquet and table3.md "
                  f"in {time.perf_counter() - start:.0f} s")


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
        elif args.command == "demo":
            args.config, args.store, args.no_search = CONFIGS / "experiments" / "quick.toml", None, False
            _pooled(args, args.quiet)
    except (ConfigError, FeatureStoreError, FileNotFoundError, KeyError, ValueError) as err:
        console.print(f"[bold red]error:[/] {err.args[0] if err.args else err}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
