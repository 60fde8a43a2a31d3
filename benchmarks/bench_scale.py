"""Federations of 10, 100 and 1 000 virtual sites, and peak memory of the pooled grid.

Virtual sites are shards of the ten site profiles: each site's patients are dealt
round-robin into ``k`` shards, written as separate store entries, so the data stay the
same and only the number of clients grows. Each federation runs in-process in a fresh
subprocess (peak RSS: its ``VmHWM``). Baseline, measured in the same run: the
10-site federation; cost per round should grow linearly with the number of sites.
Peak RSS of the pooled protocol (Unified, Table-2 scale, one FM × task) is measured the
same way, against a bare interpreter that imports the same libraries.

    python benchmarks/bench_scale.py [--sites 10 100 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import emit

from client.feature_store import Provenance, list_entries, read_entry, write_entry
from sim.runner import write_synthetic_store
from sim.sites import load_sites

ROOT = Path(__file__).resolve().parent.parent
# Peak RSS from VmHWM, not getrusage: Linux carries ru_maxrss across fork + exec, so a
# child would report at least its parent's size; VmHWM belongs to the exec'd image.
PROBE = """
import json, sys, time
{body}
hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print("RESULT", json.dumps({{"seconds": time.perf_counter() - t0, "rss_mib": int(hwm.split()[1]) / 1024}}))
"""
FEDERATION = """
import torch; torch.set_num_threads(1)
torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # one-time compiler-stack import, before t0
from server.app import FederatedSettings
from sim.federated import run_inprocess
store, sites = sys.argv[1], tuple(sys.argv[2].split(","))
t0 = time.perf_counter()
run_inprocess(FederatedSettings(store=store, fm="medclip", task="density", method="unified", sites=sites,
                                out=sys.argv[3], num_rounds=int(sys.argv[4]), local_steps=5))
"""
POOLED = """
import torch; torch.set_num_threads(1)
from client.feature_store import read_entry; from client.local import site_task
from sim.sites import load_sites; from strategies.core import concat; from strategies.protocol import fit
store = sys.argv[1]
entries = [read_entry(store, "mammoclip", s.name) for s in load_sites()]
tasks = [t for i, e in enumerate(entries) if (t := site_task(e, "density", i))]
t0 = time.perf_counter()
fit("unified", concat([t.train for t in tasks]), 4, len(tasks))
"""
BARE = """
import torch; from server.app import FederatedSettings; from sim.federated import run_inprocess
from strategies.protocol import fit
t0 = time.perf_counter()
"""


def probe(body: str, *args: str) -> dict:
    """Run a snippet in a fresh interpreter; its seconds and peak RSS."""
    res = subprocess.run([sys.executable, "-c", PROBE.format(body=body), *args], capture_output=True,
                         text=True, cwd=ROOT, timeout=1800)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
    if not lines:
        raise RuntimeError(f"probe failed: {res.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def write_shards(src: Path, dst: Path, fm: str, per_site: int) -> list[str]:
    """Split each site entry into ``per_site`` patient-disjoint shards; returns their names."""
    names = []
    for site in sorted(list_entries(src)[fm]):
        entry = read_entry(src, fm, site)
        patients = entry.manifest["patient_id"].to_numpy()
        uniq = np.random.default_rng(0).permutation(np.unique(patients))
        shard_of = dict(zip(uniq, np.arange(uniq.size) % per_site, strict=True))
        codes = np.array([shard_of[p] for p in patients])
        for j in range(per_site):
            rows = np.flatnonzero(codes == j)
            name = f"{site}-{j:03d}" if per_site > 1 else site
            manifest = entry.manifest.iloc[rows].reset_index(drop=True).assign(site=name)
            prov = Provenance(fm=fm, site=name, dim=entry.provenance.dim, n_scans=len(rows),
                              weights_sha256="synthetic", generator="shards", extra={"of": site})
            write_entry(dst, manifest, entry.features[rows], prov)
            names.append(name)
    return names


def federation_costs(store: str, names: list[str], out: str, rounds: int, repeats: int) -> dict:
    """Seconds per round (a (1 + rounds)-round run minus a 1-round run: set-up cancels) and peak RSS."""
    per_round, rss = [], []
    for r in range(repeats):
        one = probe(FEDERATION, store, ",".join(names), f"{out}-{r}-a", "1")
        more = probe(FEDERATION, store, ",".join(names), f"{out}-{r}-b", str(1 + rounds))
        per_round.append((more["seconds"] - one["seconds"]) / rounds)
        rss.append(more["rss_mib"])
    return {"sites": len(names), "s_per_round": statistics.median(per_round),
            "rss_mib": statistics.median(rss)}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results with a ``markdown`` section."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    fed = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_store(f"{tmp}/base", load_sites(), ["medclip"], args.scale, 0, show_progress=False)
        for n in args.sites:
            names = write_shards(Path(f"{tmp}/base"), Path(f"{tmp}/s{n}"), "medclip", max(n // 10, 1))
            fed[n] = federation_costs(f"{tmp}/s{n}", names, f"{tmp}/o{n}", args.rounds, args.repeats)
        write_synthetic_store(f"{tmp}/full", load_sites(), ["mammoclip"], 1.0, 0, show_progress=False)
        pooled = probe(POOLED, f"{tmp}/full")
    bare = probe(BARE)
    out = {"bench": "scale", "rounds": args.rounds, "scale": args.scale, "federations": fed,
           "pooled_protocol": pooled, "bare_interpreter": bare}
    out["markdown"] = markdown(out)
    return emit(out, args.json)


def markdown(r: dict) -> str:
    """The BENCHMARKS.md section."""
    fed = r["federations"]
    base = fed[min(fed)]
    lines = ["## Many sites and peak memory (`bench_scale.py`)", "",
             f"MedCLIP profile at scale {r['scale']:g}, density, Unified/FedAvg, 5 local steps, "
             f"{r['rounds']} rounds in process (a {1 + r['rounds']}-round run minus a 1-round run, so set-up "
             "cancels); the ten sites' patients dealt into shards (virtual "
             "sites), each federation in a fresh process. Baseline, in the same run: the "
             f"{base['sites']}-site federation. Medians of the repeats.", "",
             "| sites | s / round | ratio | per site: ratio | peak RSS MiB | ratio |",
             "|---|---|---|---|---|---|"]
    for n in sorted(fed):
        f = fed[n]
        t_ratio = f["s_per_round"] / base["s_per_round"]
        lines.append(f"| {f['sites']} | {f['s_per_round']:.2f} | {t_ratio:.1f} | "
                     f"{t_ratio * base['sites'] / f['sites']:.2f} | {f['rss_mib']:.0f} | "
                     f"{f['rss_mib'] / base['rss_mib']:.2f} |")
    p, b = r["pooled_protocol"], r["bare_interpreter"]
    lines += ["", "Peak RSS against a bare interpreter that imports the same modules and runs nothing "
              "(measured in the same run):", "", "| what | peak RSS MiB | ratio |", "|---|---|---|",
              f"| bare interpreter | {b['rss_mib']:.0f} | 1.0 |",
              f"| pooled protocol, Unified, MammoCLIP × density at Table-2 scale ({p['seconds']:.0f} s) "
              f"| {p['rss_mib']:.0f} | {p['rss_mib'] / b['rss_mib']:.1f} |",
              f"| {base['sites']}-site federation (above) | {base['rss_mib']:.0f} "
              f"| {base['rss_mib'] / b['rss_mib']:.1f} |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
