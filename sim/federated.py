"""Running the federation: Flower's Ray simulation engine, or an in-process grid.

Both run the *same* ServerApp (`server.app`) and ClientApp (`client.app`). The
in-process `InProcessGrid` calls the ClientApp directly, one node at a time, with no
sockets or processes — the engine of the fast tests; Ray is Flower's simulation engine
(``run_simulation``), one actor per core.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Sequence
from uuid import uuid4

import pandas as pd
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from client.records import copy_message
from server.app import FederatedSettings, build_server_app, run_server

QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
             "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_LOG_LEVEL": "WARNING"}


class InProcessGrid(Grid):
    """A Flower `Grid` whose nodes are ClientApp calls in this process.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs.
    node_configs : sequence of dict
        One ``node_config`` per node (as ``flower-supernode --node-config`` would give).
    seed : int
        Seeds the (random-looking) node ids, like a real SuperLink's.
    """

    #: The nodes run in this interpreter (the server then writes checkpoints in place).
    in_process = True

    def __init__(
        self, client_app: ClientApp, node_configs: Sequence[dict[str, object]], seed: int = 0
    ) -> None:
        rng = random.Random(seed)
        self.client_app = client_app
        self._run = Run.create_empty(run_id=rng.getrandbits(63))
        self.contexts = {
            (nid := rng.getrandbits(63)): Context(run_id=self._run.run_id, node_id=nid, node_config=dict(cfg),
                                                  state=RecordDict(), run_config={})
            for cfg in node_configs
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:  # noqa: D102 - Grid interface
        self._run = run

    @property
    def run(self) -> Run:  # noqa: D102 - Grid interface
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build a message to one node (Grid interface)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102 - Grid interface
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node now; a raising ClientApp becomes an error reply."""
        ids = []
        for msg in messages:
            mid = str(uuid4())
            msg.metadata.__dict__["_message_id"] = mid  # what Flower's in-memory grid does
            incoming = copy_message(msg)  # nodes must not share objects with the server
            try:
                reply = self.client_app(incoming, self.contexts[msg.metadata.dst_node_id])
            except Exception as err:  # noqa: BLE001 - mirrors the simulation engine
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      reason=f"{type(err).__name__}: {err}"), reply_to=incoming)
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[mid] = copy_message(reply)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies to ``message_ids`` (all present: delivery is synchronous)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver and collect in one call."""
        return self.pull_messages(self.push_messages(messages))


def run_inprocess(settings: FederatedSettings) -> pd.DataFrame:
    """Run one federation through `InProcessGrid` (no Ray); returns its history."""
    nodes = [{"partition-id": i, "num-partitions": len(settings.sites)} for i in range(len(settings.sites))]
    grid = InProcessGrid(client_app, nodes, seed=settings.seed)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    # Message() reads the sender's identity from process-wide state the engines set.
    TaskIdentity.run_id = grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    TaskIdentity.task_id = 1
    return run_server(grid, settings)


def run_ray(settings: FederatedSettings, num_cpus: int = 1, address: str | None = None) -> pd.DataFrame:
    """Run one federation through Flower's Ray simulation engine; returns its history.

    Parameters
    ----------
    settings : FederatedSettings
        The run.
    num_cpus : int
        CPUs each client actor reserves.
    address : str, optional
        Attach to this existing Ray cluster (``HOST:PORT`` of its head, or ``auto``)
        instead of starting a local one; defaults to ``$RAY_ADDRESS`` when set.
        Flower passes it on to ``ray.init``; clients then run on every node.
    """
    from flwr.simulation import run_simulation

    os.environ.update(QUIET_ENV)
    init_args: dict[str, object] = {"logging_level": "ERROR", "log_to_driver": False,
                                    "include_dashboard": False}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        init_args["address"] = address
    backend = {"client_resources": {"num_cpus": num_cpus, "num_gpus": 0.0}, "init_args": init_args}
    run_simulation(server_app=build_server_app(settings), client_app=client_app,
                   num_supernodes=len(settings.sites), backend_config=backend)
    path = f"{settings.out}/metrics.parquet"
    if not os.path.exists(path):
        raise RuntimeError(f"the Ray simulation wrote no history ({path}); see Flower's log above")
    return pd.read_parquet(path)


ENGINES = {"inprocess": run_inprocess, "ray": run_ray}
