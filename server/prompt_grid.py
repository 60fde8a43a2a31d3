"""A Flower `Grid` wrapper that collects replies as soon as they arrive.

Flower 1.42's grids wait a fixed time between polls for replies: 0.1 s in the simulation
engine (``InMemoryGrid.pull_interval``) and 3 s in a deployment (``HttpGrid``). A round
sends two batches of messages (train, evaluate), so each round waits on average half an
interval per batch after its last reply has arrived: about 0.1 s per round under Ray,
3 s in a deployment. `PromptGrid` polls after 5 ms and backs off to at most 0.5 s, so a
round ends within milliseconds of its last reply while a long local epoch still costs
only a few polls a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

#: First wait between polls, the factor it grows by after an empty poll, and its cap (seconds).
FIRST_WAIT, BACKOFF, LONGEST_WAIT = 0.005, 1.5, 0.5


class PromptGrid(Grid):
    """``grid`` with a prompt `send_and_receive`; every other call goes to ``grid`` as it is.

    Parameters
    ----------
    grid : Grid
        The engine's grid (simulation, deployment or in-process).
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Run) -> None:  # noqa: D102 - Grid interface
        self.grid.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102 - Grid interface
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        """Build a message to one node (Grid interface)."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102 - Grid interface
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:  # noqa: D102 - Grid interface
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102 - Grid interface
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102 - Grid interface
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        """Push ``messages``, then pull replies until all are in or ``timeout`` seconds pass.

        As Flower's grids do, a timeout returns the replies received so far; ``None``
        waits for all of them.
        """
        pending = set(self.grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = FIRST_WAIT
        while pending:
            got = list(self.grid.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (end is not None and time.monotonic() >= end):
                break
            time.sleep(wait if end is None else max(0.0, min(wait, end - time.monotonic())))
            wait = FIRST_WAIT if got else min(wait * BACKOFF, LONGEST_WAIT)
        return replies
