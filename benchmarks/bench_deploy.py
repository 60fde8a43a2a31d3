"""Seconds per round: a rehearsed TLS + auth deployment vs the in-process simulation.

The same job both ways — GroupDRO, three synthetic sites (medclip profile, scale 0.05),
5 local steps. The deployment is `configs/deploy/rehearse.sh` (one SuperLink, one
SuperNode per site, on loopback inside a network namespace when possible) driven by
`flwr run . rehearsal --stream`; a round's time is the gap between the streamed
``[ROUND k/N]`` lines (the last round ends at ``Strategy execution finished``). The
in-process engine (`sim.federated.run_inprocess`) is the baseline, repeated. (Flower's
Ray engine's per-round cost is in bench_federated.py: a Ray round on this scale is a
fraction of a second, below the noise of a Ray start-up, so a short job cannot time it.)

    python benchmarks/bench_deploy.py [--rounds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import emit

from server.app import FederatedSettings
from sim.federated import run_inprocess
from sim.runner import write_synthetic_store
from sim.sites import load_sites

ROOT = Path(__file__).resolve().parent.parent
SITES = ("CBIS-DDSM", "INbreast", "RSNA")
JOB = {"fm": "medclip", "method": "groupdro", "local_steps": 5}
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def deployed_rounds(store: str, tmp: str, rounds: int) -> dict[str, object]:
    """Start the rehearsal, run ``rounds`` rounds with `flwr run`, stop it; per-round seconds."""
    fed, rehearse = f"{tmp}/fed", str(ROOT / "configs" / "deploy" / "rehearse.sh")
    env = os.environ | ENV | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    t0 = time.perf_counter()
    subprocess.run([rehearse, "start", fed, store, *SITES], check=True, env=env, cwd=ROOT,
                   capture_output=True)
    started = time.perf_counter() - t0
    run_config = (f"store='{store}' fm='{JOB['fm']}' method='{JOB['method']}' sites='{','.join(SITES)}' "
                  f"out='{tmp}/dep' num-server-rounds={rounds} local-steps={JOB['local_steps']}")
    marks: list[float] = []
    try:
        proc = subprocess.Popen(["flwr", "run", ".", "rehearsal", "--stream", "--run-config", run_config],
                                env=env | {"FLWR_HOME": f"{fed}/flwr-home"}, cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            if re.search(r"\[ROUND \d+/\d+\]|Strategy execution finished", line):
                marks.append(time.perf_counter())
        if proc.wait() != 0 or len(marks) != rounds + 1:
            raise RuntimeError(f"flwr run failed or streamed {len(marks)} round marks; see {fed}/logs")
    finally:
        subprocess.run([rehearse, "stop", fed], env=env, capture_output=True)
    return {"start_s": started, "rounds_s": [b - a for a, b in zip(marks, marks[1:], strict=False)]}


def _isolated_deploy(store: str, tmp: str, rounds: int) -> dict[str, object]:
    """`deployed_rounds` in a loopback-only network namespace when root and unshare allow."""
    cmd = [sys.executable, __file__, "--inside", store, tmp, str(rounds)]
    if os.geteuid() == 0 and shutil.which("unshare"):
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, start_new_session=True,
                         cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"deployment bench failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown(inproc: float, deployed: list[float], start_s: float, rounds: int, repeats: int) -> str:
    """The BENCHMARKS.md section."""
    dep = statistics.median(deployed)
    return "\n".join([
        "## Deployment vs simulation, seconds per round (bench_deploy.py)", "",
        f"GroupDRO on three synthetic sites (medclip, scale 0.05, {JOB['local_steps']} local steps): "
        f"a rehearsed TLS + node-auth deployment (one SuperLink, three SuperNodes on loopback, "
        f"`flwr run`, {rounds} rounds, median over rounds) against the in-process engine on the same "
        f"job (median of {repeats} runs). Deployment starts a fresh `flwr-clientapp` process per "
        "message, which dominates a round on 2 cores (Flower's Ray engine: see bench_federated.py).", "",
        "| engine | s / round | × in-process |", "|---|---|---|",
        f"| in-process (baseline) | {inproc:.3f} | 1.0 |",
        f"| deployment (TLS + auth) | {dep:.1f} | {dep / inproc:.0f} |", "",
        f"Starting the rehearsal (SuperLink, three registered SuperNodes) took {start_s:.1f} s.", ""])


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results with the ``markdown`` section."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--inside", nargs=3, metavar=("STORE", "TMP", "ROUNDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        print(json.dumps(deployed_rounds(args.inside[0], args.inside[1], int(args.inside[2]))))
        return {}
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = str(write_synthetic_store(f"{tmp}/store", [s for s in load_sites() if s.name in SITES],
                                          [JOB["fm"]], 0.05, 0, show_progress=False))
        per_round = []
        for i in range(args.repeats):
            s = FederatedSettings(store=store, task="density", sites=SITES, out=f"{tmp}/inproc{i}",
                                  num_rounds=args.rounds, **JOB)
            t0 = time.perf_counter()
            run_inprocess(s)
            per_round.append((time.perf_counter() - t0) / args.rounds)
        dep = _isolated_deploy(store, tmp, args.rounds)
    inproc = statistics.median(per_round)
    out = {"bench": "deploy", "rounds": args.rounds, "sites": len(SITES),
           "inprocess_s_per_round": round(inproc, 4),
           "deploy_s_per_round": [round(x, 2) for x in dep["rounds_s"]],
           "deploy_start_s": round(dep["start_s"], 2),
           "deploy_vs_inprocess_ratio": round(statistics.median(dep["rounds_s"]) / inproc, 1)}
    out["markdown"] = markdown(inproc, dep["rounds_s"], dep["start_s"], args.rounds, args.repeats)
    return emit(out, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
