"""Run every ``benchmarks/bench_*.py`` and collect their JSON results in ``.bench-out/``."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    out = HERE.parent / ".bench-out"
    out.mkdir(exist_ok=True)
    results = []
    sys.path.insert(0, str(HERE))  # the scripts import their sibling `common`
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        module = runpy.run_path(str(script))
        results.append(module["main"]([]))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
