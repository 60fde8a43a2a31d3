"""A rehearsed deployment: TLS + node-auth SuperLink, three SuperNodes, `flwr run` (slow).

Runs exactly the commands of docs/deploy.md (configs/deploy/*.sh and `flwr run . rehearsal`)
inside a loopback-only network namespace, with a synthetic feature store standing in for
the hospitals' data. Needs root for ``unshare -n``, as CI and the dev machines have.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sim.runner import write_synthetic_store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SITES = ("CBIS-DDSM", "INbreast", "RSNA")

# Start a rehearsal federation; stop everything it launched on exit, also on failure,
# keeping the pid list for the test.
PROLOGUE = """
set -u
ip link set lo up
export PATH="{bin}:$PATH"
cd "{root}"
fed="{fed}"
trap 'cp "$fed/pids" "$fed/pids.started"; configs/deploy/rehearse.sh stop "$fed"' EXIT
configs/deploy/rehearse.sh start "$fed" "{store}" {sites} || exit 10
"""

SCRIPT = PROLOGUE + """t0=$(date +%s)
FLWR_HOME="$fed/flwr-home" flwr run . rehearsal --stream --run-config \\
  "store='{store}' fm='medclip' method='groupdro' sites='{site_list}' out='{out}' \\
   num-server-rounds=2 local-steps=5" || exit 11
echo "FLWR_RUN_SECONDS $(( $(date +%s) - t0 ))"
# A hospital whose key the coordinator never registered is refused.
configs/deploy/make-node-key.sh "$fed/keys" intruder
timeout 90 flower-supernode --root-certificates "$fed/certs/ca.crt" \\
  --auth-supernode-private-key "$fed/keys/intruder" --superlink 127.0.0.1:9093 --port 9190 \\
  --node-config 'site="intruder" data-path="/nonexistent"' --max-retries 0 > "$fed/logs/intruder.log" 2>&1
echo "INTRUDER_RC $?"
FLWR_HOME="$fed/flwr-home" flwr supernode ls rehearsal --format json > "$fed/nodes.json"
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def test_tls_auth_federation_of_three_hospitals(tmp_path, sites):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a loopback-only network namespace")
    store = write_synthetic_store(tmp_path / "store", [s for s in sites if s.name in SITES], ["medclip"],
                                  0.05, 0, show_progress=False)
    fed, out = tmp_path / "fed", tmp_path / "out"
    script = SCRIPT.format(bin=Path(sys.executable).parent, root=ROOT, fed=fed, store=store, out=out,
                           sites=" ".join(SITES), site_list=",".join(SITES))
    env = os.environ | {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    proc = subprocess.Popen(["unshare", "-n", "bash", "-c", script], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=420)
        time.sleep(1)  # let the stopped processes' children finish exiting
        started = [int(p) for p in (fed / "pids.started").read_text().split()]
        # rehearse.sh starts each daemon as a process-group leader; its helpers share the group.
        left = [p for p in started if _alive(p)] + [m for p in started for m in _group_members(p)]
        left += _group_members(proc.pid)
    finally:  # on any failure, still stop the session and every daemon group start made
        leaders = (fed / "pids").read_text().split() if (fed / "pids").exists() else []
        for pgid in [proc.pid, *map(int, leaders)]:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, output[-6000:]
    print(next(line for line in output.splitlines() if line.startswith("FLWR_RUN_SECONDS")))

    h = pd.read_parquet(out / "metrics.parquet")
    f1 = h[(h.metric == "f1") & (h["class"] == "macro") & (h.site != "all")]
    for rnd in (1, 2):
        assert set(f1[f1["round"] == rnd]["site"]) == set(SITES)
        assert len(h[(h.metric == "f1_worst") & (h["round"] == rnd)]) == 1
    assert (h[h.metric == "n_missing"]["value"] == 0).all()

    assert "INTRUDER_RC 0" not in output and "INTRUDER_RC" in output, output[-3000:]
    assert "Failed to activate SuperNode" in (fed / "logs" / "intruder.log").read_text()
    logs = [(fed / "logs" / f"register-{s}.log").read_text() for s in SITES]
    registered = {re.search(r"SuperNode (\d+) registered", log)[1] for log in logs}
    nodes = json.loads((fed / "nodes.json").read_text())["nodes"]
    assert {n["node-id"] for n in nodes} == registered and len(registered) == len(SITES)
    assert len(started) == 1 + len(SITES) and not left, f"still running: {left}"


DROP_SCRIPT = PROLOGUE + """FLWR_HOME="$fed/flwr-home" flwr run . rehearsal --stream --run-config \\
  "store='{store}' fm='medclip' method='groupdro' sites='{site_list}' out='{out}' \\
   num-server-rounds=4 local-steps=5 node-timeout=120.0" > "$fed/run.log" 2>&1 &
run=$!
until_streamed() {{  # wait (at most 300 s) for the run's log to show $1
  for _ in $(seq 1 300); do grep -q "$1" "$fed/run.log" && return 0; sleep 1; done
  return 1
}}
until_streamed 'ROUND 2/4' || exit 12
kill -TERM -- "-$(sed -n 3p "$fed/pids")"   # the second site's SuperNode leaves mid-run
until_streamed 'ROUND 3/4' || exit 13
setsid flower-supernode --root-certificates "$fed/certs/ca.crt" \\
  --auth-supernode-private-key "$fed/keys/{gone}" --superlink 127.0.0.1:9093 --port 9199 \\
  --node-config 'site="{gone}" data-path="{store}"' \\
  > "$fed/logs/restarted.log" 2>&1 &
echo $! >> "$fed/pids"
wait $run || exit 11
"""


def test_node_that_leaves_is_marked_missing_and_rejoins(tmp_path, sites):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a loopback-only network namespace")
    two = ("CBIS-DDSM", "RSNA")
    store = write_synthetic_store(tmp_path / "store", [s for s in sites if s.name in two], ["medclip"],
                                  0.05, 0, show_progress=False)
    fed, out = tmp_path / "fed", tmp_path / "out"
    script = DROP_SCRIPT.format(bin=Path(sys.executable).parent, root=ROOT, fed=fed, store=store, out=out,
                                sites=" ".join(two), site_list=",".join(two), gone=two[1])
    env = os.environ | {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    proc = subprocess.Popen(["unshare", "-n", "bash", "-c", script], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=480)
        time.sleep(1)
        started = [int(p) for p in (fed / "pids.started").read_text().split()]
        left = [p for p in started if _alive(p)] + [m for p in started for m in _group_members(p)]
    finally:
        leaders = (fed / "pids").read_text().split() if (fed / "pids").exists() else []
        for pgid in [proc.pid, *map(int, leaders)]:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    run_log = (fed / "run.log").read_text() if (fed / "run.log").exists() else ""
    assert proc.returncode == 0, output[-3000:] + run_log[-3000:]
    h = pd.read_parquet(out / "metrics.parquet")
    missing = h[h.metric.isin(["train_missing", "eval_missing"])]
    assert set(missing["site"]) == {two[1]} and set(missing["round"]) <= {2, 3}
    n_missing = h[h.metric == "n_missing"].set_index("round")["value"]
    gone_rounds = set(missing[missing.metric == "eval_missing"]["round"])
    assert all(n_missing[r] == 1 for r in gone_rounds) and len(missing) > 0
    f1 = h[(h.metric == "f1") & (h["class"] == "macro") & (h.site != "all")]
    assert set(f1[f1["round"] == 4]["site"]) == set(two), "the restarted node did not rejoin"
    assert n_missing[4] == 0 and len(started) == 4 and not left, f"still running: {left}"
