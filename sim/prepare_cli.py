"""``fedmammo prepare``: turn a hospital's release into a prepared site folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from client.prepare import map_and_select, prepare_site
from client.selection import PATIENT_CAP


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``prepare`` subcommand."""
    p = sub.add_parser("prepare", help="map a site's release to the manifest and preprocess its images")
    p.add_argument("--site", required=True, help="adapter: CBIS-DDSM, RSNA, …, or 'generic' with --mapping")
    p.add_argument("--root", required=True, type=Path, help="the release as it sits on disk")
    p.add_argument("--out", type=Path, help="prepared site folder to write (required unless --dry-run)")
    p.add_argument("--mapping", type=Path, help="TOML column/value mapping (generic adapter)")
    p.add_argument("--seed", type=int, default=0, help="seeds the class cap and the split")
    p.add_argument("--cap", type=int, default=PATIENT_CAP, help="patients per class (paper: 1000)")
    p.add_argument("--workers", type=int, help="image processes (default: all cores)")
    p.add_argument("--dry-run", action="store_true", help="print what would be kept; write nothing")


def run(args: argparse.Namespace, console: Console, quiet: bool) -> None:
    """Execute ``fedmammo prepare`` with parsed ``args``."""
    if args.dry_run:
        mapped, selected, report = map_and_select(args.site, args.root, mapping=args.mapping,
                                                  seed=args.seed, cap=args.cap)
        console.print(mapped.report.summary(mapped.manifest))
        console.print(report.summary())
        console.print(f"dry run: {len(selected)} scans would be preprocessed; nothing written")
        return
    if args.out is None:
        raise ValueError("prepare: --out is required unless --dry-run is given")
    prepared = prepare_site(args.site, args.root, args.out, mapping=args.mapping, seed=args.seed,
                            workers=args.workers, progress=not quiet, cap=args.cap)
    console.print(prepared.summary())
    console.print(f"wrote {args.out}/manifest.parquet and {args.out}/images/")
