"""The Flower ServerApp: discover the sites, build the method's strategy, run the rounds.

After discovery (a query round: each node reports its site and aggregate label counts)
the server fixes the federation plan — training sites and their domain indices, global
class weights — builds the strategy the method registers (FedAvg by default), and runs
the rounds. After every round the strategy appends per-site fairness to the history;
the server checkpoints parameters, strategy state, history and round, so ``resume``
continues an interrupted run to the same final parameters.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from client.app import build_model
from client.atomic import atomic_dir, write_arrow, write_parquet
from client.payload import numpy_record, save_record
from server.history import RoundRows, history_frame, read_history_part, rows_table
from server.privacy import privatize
from server.prompt_grid import PromptGrid
from strategies.base import get_method, seed_torch
from strategies.core import class_weights
from strategies.federated import FederatedSettings, FederationPlan, FedMammoStrategy  # noqa: F401 - re-export

log = logging.getLogger("fedmammo")
CHECKPOINT = "checkpoint"
#: Per-round history files of the checkpoint (`Checkpointer`).
HISTORY_PARTS = "checkpoint-history"


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """Node ids once ``expected`` nodes have registered (they can join after the server)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {expected} nodes connected within {timeout:.0f} s")
        time.sleep(0.05)
    return nodes


def discover(grid: Grid, s: FederatedSettings) -> dict[int, ConfigRecord]:
    """Ask every node for its site and label counts; ``{node_id: info}``."""
    nodes = wait_for_nodes(grid, s.min_nodes or len(s.sites), s.timeout)
    cfg = ConfigRecord({"sites": ",".join(s.sites), "store": s.store, "fm": s.fm, "task": s.task})
    msgs = [Message(RecordDict({"config": cfg}), dst_node_id=n, message_type=MessageType.QUERY,
                    group_id="discover") for n in nodes]
    infos = {}
    for reply in grid.send_and_receive(msgs, timeout=s.timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed discovery: {reply.error.reason}")
        infos[reply.metadata.src_node_id] = reply.content["info"]
    return infos


def make_plan(s: FederatedSettings, infos: dict[int, ConfigRecord]) -> tuple[FederationPlan, int]:
    """The federation plan and the feature dimension, from the discovery replies."""
    labelled = sorted(str(i["site"]) for i in infos.values() if int(i["n-train"]) > 0)
    for info in infos.values():
        if int(info["n-train"]) == 0:
            log.info("skipping site %s for task %s: no labelled rows", info["site"], s.task)
    if not labelled:
        raise ValueError(f"no site has labelled rows for task {s.task!r}")
    totals = np.sum([np.asarray(i["class-counts"], dtype=np.int64) for i in infos.values()], axis=0)
    labels = np.repeat(np.arange(totals.size), totals)
    node_to_site = {n: str(i["site"]) for n, i in infos.items() if str(i["site"]) in labelled}
    plan = FederationPlan(settings=s, node_to_site=node_to_site,
                          domains={site: d for d, site in enumerate(labelled)},
                          class_weights=class_weights(labels, totals.size))
    dim = max(int(i["dim"]) for i in infos.values())
    return plan, dim


def initial_arrays(plan: FederationPlan, dim: int) -> ArrayRecord:
    """The method's freshly initialised model (seeded), as the round-1 global model."""
    s = plan.settings
    seed_torch(s.seed)
    cfg = ConfigRecord({"method": s.method, "task": s.task, "n-domains": len(plan.domains),
                        "class-weights": list(plan.class_weights),
                        "method-config": json.dumps(s.method_overrides)})
    return numpy_record(build_model(cfg, dim).state_dict())


def history_parts(out: Path) -> list[Path]:
    """The per-round history files of the run in ``out``, in round order."""
    parts = [*(out / HISTORY_PARTS).glob("round-*.arrow"), *(out / HISTORY_PARTS).glob("round-*.parquet")]
    return sorted(parts, key=part_round)  # .parquet: parts written by earlier versions


def part_round(part: Path) -> int:
    """The round a `history_parts` file holds (``round-00007.arrow`` → 7)."""
    return int(part.stem.split("-")[1])


class Checkpointer:
    """Writes parameters, strategy state and the rounds' new history after a round.

    The history grows every round, so it is not rewritten whole: the rows of the rounds
    since the last checkpoint go to one file under ``out/checkpoint-history/`` (written
    atomically, named by the round) before the small checkpoint folder (arrays, state,
    round) is swapped in; a resume reads the parts up to the checkpoint's round. A
    checkpoint thus costs the same at round 50 as at round 1. It is skipped after a round
    that ends less than ``every_s`` seconds after the last one, except the run's last.

    With ``background`` the files are written on a thread while the next round runs: a
    server that waits on remote clients would otherwise wait on them too. In process the
    clients share the interpreter with that thread, which costs more than the write, so
    it is done in place. Everything a write needs is captured when the round ends; one
    write is in flight at a time, and its error surfaces at the next checkpoint or at
    `close`, which the run calls before it writes its results.
    """

    def __init__(self, out: Path, strategy: FedMammoStrategy, every_s: float = 0.0,
                 background: bool = True) -> None:
        self.folder = out / CHECKPOINT
        self.parts = out / HISTORY_PARTS
        self.strategy = strategy
        self.every_s = every_s
        self.saved = 0  # history frames already in a part file
        self._last = time.monotonic()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedmammo-checkpoint") \
            if background else None
        self._pending: Future[None] | None = None

    def start(self, done: int) -> None:
        """Drop part files of rounds after ``done`` (a fresh run: all of them)."""
        for part in history_parts(self.parts.parent):
            if part_round(part) > done:
                part.unlink()
        self.saved = len(self.strategy.history)
        self._last = time.monotonic()

    def __call__(self, server_round: int) -> None:
        """Save the state reached after ``server_round`` (one atomic folder swap), if due."""
        last = server_round >= self.strategy.plan.settings.num_rounds
        if not last and time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        arrays = self.strategy.current_arrays
        new = self.strategy.history[self.saved:]
        self.saved = len(self.strategy.history)
        state = json.dumps({"round": server_round, "strategy": self.strategy.state_dict()})
        self.wait()
        if self._pool is None:
            self._write(server_round, new, arrays, state)
        else:
            self._pending = self._pool.submit(self._write, server_round, new, arrays, state)

    def _write(self, server_round: int, new: list[RoundRows], arrays: ArrayRecord, state: str) -> None:
        if new:  # this session's rounds: `start` counts restored history frames as saved
            write_arrow(self.parts / f"round-{server_round:05d}.arrow", rows_table(new))

        def fill(tmp: Path) -> None:
            save_record(tmp / "arrays.npz", arrays)
            (tmp / "state.json").write_text(state)

        atomic_dir(self.folder, fill)

    def wait(self) -> None:
        """Block until the write in flight (if any) is done; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish the last write and stop the writer thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()


def restore(out: Path, strategy: FedMammoStrategy) -> tuple[int, ArrayRecord]:
    """Load a checkpoint into ``strategy``; returns (rounds done, global arrays)."""
    folder = out / CHECKPOINT
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(f"{folder}: no checkpoint to resume from")
    state = json.loads((folder / "state.json").read_text())
    done = int(state["round"])
    strategy.load_state_dict(state["strategy"])
    strategy.history = [read_history_part(p) for p in history_parts(out) if part_round(p) <= done]
    with np.load(folder / "arrays.npz") as npz:
        arrays = numpy_record({k: npz[k] for k in npz.files})
    return done, arrays


def run_server(grid: Grid, s: FederatedSettings) -> pd.DataFrame:
    """Run one federated experiment on ``grid``; returns and writes its history.

    Parameters
    ----------
    grid : Grid
        Flower grid (simulation engine, deployment, or the in-process grid).
    s : FederatedSettings
        What to run.

    Returns
    -------
    pandas.DataFrame
        The history (`server.history.METRIC_COLUMNS`), also written to
        ``out/metrics.parquet`` with the final parameters in ``out/final.npz``.
    """
    out = Path(s.out)
    in_process = bool(getattr(grid, "in_process", False))  # clients share this interpreter
    grid = PromptGrid(grid)
    plan, dim = make_plan(s, discover(grid, s))
    strategy_cls = getattr(get_method(s.method), "strategy_cls", None) or FedMammoStrategy
    strategy = strategy_cls(plan)
    checkpoint = strategy.on_round_end = Checkpointer(
        out, strategy, s.checkpoint_every_s, background=not in_process)
    arrays, done = initial_arrays(plan, dim), 0
    if s.resume:
        done, arrays = restore(out, strategy)
        plan.round_offset = done
    checkpoint.start(done)
    strategy.current_arrays = arrays
    try:
        if s.num_rounds > done:
            privatize(strategy, s).start(grid=grid, initial_arrays=arrays, num_rounds=s.num_rounds - done,
                                         timeout=s.timeout)
    finally:
        checkpoint.close()
    history = history_frame(strategy.history)
    write_parquet(out / "metrics.parquet", history)
    final = strategy.current_arrays
    np.savez(out / "final.npz", **{k: v.numpy() for k, v in final.items()})
    (out / "settings.json").write_text(json.dumps(asdict(s), indent=2))
    return history


def settings_from_run_config(context: Context) -> FederatedSettings:
    """Settings from ``flwr run``'s run_config (kebab-case keys of pyproject's app config)."""
    rc = dict(context.run_config)
    return FederatedSettings(
        store=str(rc["store"]), fm=str(rc["fm"]), task=str(rc["task"]), method=str(rc["method"]),
        sites=tuple(str(rc["sites"]).split(",")), out=str(rc["out"]),
        num_rounds=int(rc.get("num-server-rounds", 5)), local_epochs=int(rc.get("local-epochs", 1)),
        local_steps=int(rc.get("local-steps", 0)),
        batch_size=int(rc.get("batch-size", 32)), lr=float(rc.get("lr", 1e-3)),
        seed=int(rc.get("seed", 0)), fraction_train=float(rc.get("fraction-train", 1.0)),
        fault_rate=float(rc.get("fault-rate", 0.0)), resume=bool(rc.get("resume", False)),
        timeout=float(rc.get("node-timeout", 600.0)), min_nodes=int(rc.get("min-nodes", 0)),
        dp_noise=float(rc.get("dp-noise", 0.0)), dp_clip=float(rc.get("dp-clip", 1.0)),
        dp_delta=float(rc.get("dp-delta", 1e-5)), checkpoint_every_s=float(rc.get("checkpoint-every-s", 1.0)))


def build_server_app(settings: FederatedSettings | None = None) -> ServerApp:
    """A ServerApp running ``settings`` (or the run_config's, under ``flwr run``)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, settings or settings_from_run_config(context))

    return server


app = build_server_app()
