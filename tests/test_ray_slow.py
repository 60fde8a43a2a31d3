"""Flower's real Ray simulation engine: ten sites, three rounds (marked slow; CI runs it).

Ray is started inside a fresh network namespace that holds only a loopback interface,
so none of its sockets can reach beyond this machine (it would otherwise bind and probe
non-loopback addresses). Needs root for ``unshare -n``, as CI and the dev machines have.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from sim.runner import write_synthetic_store

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import sys
    from server.app import FederatedSettings
    from sim.federated import run_ray
    from sim.sites import load_sites
    store, out = sys.argv[1], sys.argv[2]
    sites = tuple(s.name for s in load_sites())
    run_ray(FederatedSettings(store=store, fm="medclip", task="density", method="unified",
                              sites=sites, out=out, num_rounds=3, local_steps=5))
""")


def _isolated(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to isolate Ray in a loopback-only network namespace")
    inner = " ".join(shlex.quote(c) for c in cmd)
    return ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"]


def _run_session(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd`` in its own session; afterwards kill whatever it left in that session."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        try:  # Ray daemons left in the session are stopped with it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, output


def test_ray_simulation_every_site_every_round(tmp_path, sites):
    write_synthetic_store(tmp_path / "store", sites, ["medclip"], 0.05, 0, show_progress=False)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    cmd = _isolated([sys.executable, str(script), str(tmp_path / "store"), str(tmp_path / "out")])
    env = os.environ | {"FLWR_LOG_LEVEL": "WARNING", "RAY_DEDUP_LOGS": "0"}
    returncode, output = _run_session(cmd, env)
    assert returncode == 0, output[-4000:]
    h = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    f1 = h[(h.metric == "f1") & (h["class"] == "macro") & (h.site != "all")]
    labelled = {s.name for s in sites if s.has_label("density")}
    for rnd in (1, 2, 3):
        assert set(f1[f1["round"] == rnd]["site"]) == labelled
    assert (h[h.metric == "n_missing"]["value"] == 0).all()


FLWR_RUN = """
ip link set lo up
export PATH="{bin}:$PATH" FLWR_HOME="{home}"
cd "{root}"
# `flwr run` leaves its local SuperLink running: stop it by pid, also on failure.
trap 'for pid in $(pgrep -f "[f]lower-superlink.*{home}"); do kill "$pid"; done' EXIT
flwr run . --federation-config "num-supernodes=10 client-resources-num-cpus=1" \\
  --run-config "store='{store}' fm='medclip' out='{out}' num-server-rounds=2 local-steps=5" --stream
"""


def test_flwr_run_local_simulation(tmp_path, sites):
    """`flwr run .` with the local simulation runtime, as the README documents it."""
    from pathlib import Path

    write_synthetic_store(tmp_path / "store", sites, ["medclip"], 0.05, 0, show_progress=False)
    root = Path(__file__).resolve().parent.parent
    script = FLWR_RUN.format(bin=Path(sys.executable).parent, home=tmp_path / "flwr", root=root,
                             store=tmp_path / "store", out=tmp_path / "out")
    cmd = _isolated(["sh", "-c", script])
    env = os.environ | {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    env.pop("FLWR_LOG_LEVEL", None)
    returncode, output = _run_session(cmd, env)
    assert returncode == 0, output[-4000:]
    h = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    f1 = h[(h.metric == "f1") & (h["class"] == "macro") & (h.site != "all")]
    assert sorted(f1["round"].unique()) == [1, 2]
    assert set(f1["site"]) == {s.name for s in sites if s.has_label("density")}
