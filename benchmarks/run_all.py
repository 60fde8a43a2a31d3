"""Run every ``benchmarks/bench_*.py`` and rewrite BENCHMARKS.md from their sections.

Each script's ``main([])`` returns a dict whose ``"markdown"`` is one complete section;
sections appear in script-name order under a header describing the machine. Raw results
go to ``.bench-out/results.json``. ``--only NAME …`` runs just those scripts and keeps
the other sections of the existing BENCHMARKS.md.

    python benchmarks/run_all.py [--only bench_grid]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import runpy
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = ROOT / "BENCHMARKS.md"
HEADING = re.compile(r"^## .*\(`?(bench_\w+)\.py`?\)", re.MULTILINE)


def machine_info() -> str:
    """One Markdown paragraph: CPU model, cores, RAM, torch and Python versions, date, commit."""
    import torch

    mem = next((int(ln.split()[1]) / 2**20 for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), float("nan"))
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, no GPU used; Python "
            f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads "
            f"by default, the scripts set their own); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"commit {commit()}.")


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), platform.processor() or "unknown CPU")


def commit() -> str:
    """The checkout's short commit hash."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "unknown"


def stamped(markdown: str, measured: str) -> str:
    """A section with the line ``measured`` under its heading.

    `--only` reruns some sections and keeps the others, which may come from another
    machine or commit: each section says where and when its figures were measured.
    """
    heading, _, rest = markdown.partition("\n")
    return f"{heading}\n\n{measured}\n{rest}".rstrip() + "\n"


def split_sections(text: str) -> dict[str, str]:
    """The existing file's sections, keyed by the script named in their heading."""
    starts = [(m.start(), m.group(1)) for m in HEADING.finditer(text)]
    ends = [s for s, _ in starts[1:]] + [len(text)]
    return {name: text[s:e].rstrip() + "\n" for (s, name), e in zip(starts, ends, strict=True)}


def run_script(script: Path) -> dict:
    """``main([])`` of one script; a failure becomes a section saying so."""
    print(f"== {script.name}", flush=True)
    try:
        result = runpy.run_path(str(script), run_name="bench")["main"]([])
    except Exception:  # noqa: BLE001 — one broken benchmark must not lose the others
        err = traceback.format_exc(limit=3)
        return {"bench": script.stem, "error": err,
                "markdown": f"## {script.stem} failed (`{script.name}`)\n\n```\n{err}```\n"}
    if "markdown" not in result:
        result["markdown"] = f"## {script.stem} (`{script.name}`)\n\nNo markdown section returned.\n"
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and rewrite BENCHMARKS.md; returns the exit code."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None, help="script names (bench_x) to run")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))  # the scripts import their sibling helpers
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in set(args.only)]
    results = [run_script(s) for s in scripts]
    sections = split_sections(TARGET.read_text()) if args.only and TARGET.exists() else {}
    measured = f"_Measured on {cpu_model()}, {time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit()}._"
    sections |= {s.stem: stamped(r["markdown"], measured) for s, r in zip(scripts, results, strict=True)}
    header = ("# Benchmarks\n\nWritten by `make bench` (`benchmarks/run_all.py`). Every figure is a "
              "ratio against a baseline measured in the same run, medians of several runs; absolute "
              "seconds are for scale and move with machine load. Each section names the machine and "
              "commit it was measured on (`--only` reruns some sections and keeps the others).\n\n"
              "Latest run: " + machine_info() + "\n")
    body = "\n".join(sections[k] for k in sorted(sections))
    from client.atomic import write_text

    write_text(TARGET, header + "\n" + body)
    out = ROOT / ".bench-out"
    out.mkdir(exist_ok=True)
    write_text(out / "results.json", json.dumps(results, indent=2, default=str))
    print(f"wrote {TARGET} and {out / 'results.json'}")
    return int(any("error" in r for r in results))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
