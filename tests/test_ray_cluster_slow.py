"""A federation attached to an existing two-node Ray cluster (marked slow; CI runs it).

A head and a worker Ray node (one CPU each) are started with ``ray start`` on loopback,
inside private network *and* PID namespaces: Ray can reach nothing beyond this machine,
``ray stop`` sees only this test's processes, and whatever is left dies with the
namespace. A 10-site simulation then attaches by address (`sim.federated.run_ray`),
and its client actors must have run on both nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pandas as pd
import pytest

from sim.runner import write_synthetic_store

pytestmark = pytest.mark.slow
PORT = 6391

SCRIPT = textwrap.dedent("""
    import json, sys
    import ray
    from server.app import FederatedSettings
    from sim.federated import run_ray
    from sim.sites import load_sites
    store, out, address = sys.argv[1:4]
    ray.init(address=address, logging_level="ERROR")
    nodes = sum(n["Alive"] for n in ray.nodes())
    ray.shutdown()
    sites = tuple(s.name for s in load_sites())
    run_ray(FederatedSettings(store=store, fm="medclip", task="density", method="unified",
                              sites=sites, out=out, num_rounds=2, local_steps=5), address=address)
    ray.init(address=address, logging_level="ERROR")
    actors = ray._private.state.actors().values()
    used = {a["Address"]["NodeID"] for a in actors if a["ActorClassName"].endswith("ClientAppActor")}
    print("RESULT", json.dumps({"alive_nodes": nodes, "actor_nodes": len(used)}))
""")

CLUSTER = """
set -e
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0
trap '"{ray}" stop --force >/dev/null 2>&1 || true' EXIT
"{ray}" start --head --port={port} --num-cpus=1 --node-ip-address=127.0.0.1 \\
    --include-dashboard=false --temp-dir="{tmp}/ray" --disable-usage-stats >/dev/null
"{ray}" start --address=127.0.0.1:{port} --num-cpus=1 --node-ip-address=127.0.0.1 \\
    --disable-usage-stats >/dev/null
"{python}" "{script}" "{store}" "{out}" 127.0.0.1:{port}
"""


def test_simulation_attaches_to_a_two_node_cluster(tmp_path, sites):
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.geteuid() != 0 or shutil.which("unshare") is None or not os.path.exists(ray):
        pytest.skip("needs root, unshare and the ray CLI to run a private loopback cluster")
    write_synthetic_store(tmp_path / "store", sites, ["medclip"], 0.05, 0, show_progress=False)
    (tmp_path / "run.py").write_text(SCRIPT)
    short = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    (tmp_path / "cluster.sh").write_text(CLUSTER.format(
        ray=ray, port=PORT, tmp=short, python=sys.executable, script=tmp_path / "run.py",
        store=tmp_path / "store", out=tmp_path / "out"))
    env = os.environ | {"FLWR_LOG_LEVEL": "WARNING", "RAY_DEDUP_LOGS": "0"}
    try:
        cmd = ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", str(tmp_path / "cluster.sh")]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    result = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT"))[7:])
    assert result == {"alive_nodes": 2, "actor_nodes": 2}
    h = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    f1 = h[(h.metric == "f1") & (h["class"] == "macro") & (h.site != "all")]
    labelled = {s.name for s in sites if s.has_label("density")}
    for rnd in (1, 2):
        assert set(f1[f1["round"] == rnd]["site"]) == labelled
    assert (h[h.metric == "n_missing"]["value"] == 0).all()
