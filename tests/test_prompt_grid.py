"""`server.prompt_grid.PromptGrid`: Flower's send-and-receive contract, collected promptly."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

from server.prompt_grid import PromptGrid


class SlowGrid:
    """Replies to message *i* become available at the ``delays[i]``-th pull; -1 never."""

    def __init__(self, delays: list[int]) -> None:
        self.delays, self.pulls, self.run = delays, 0, "run"

    def push_messages(self, messages: Iterable[str]) -> list[str]:
        return [f"id-{m}" for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> list[SimpleNamespace]:
        self.pulls += 1
        ready = [i for i in sorted(message_ids) if 0 <= self.delays[int(i[3:])] <= self.pulls]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def _ids(replies: Iterable[SimpleNamespace]) -> list[str]:
    return sorted(r.metadata.reply_to_message_id for r in replies)


def test_every_reply_is_collected_once_and_polling_stops_with_the_last() -> None:
    slow = SlowGrid([1, 4, 2])
    replies = PromptGrid(slow).send_and_receive([0, 1, 2])
    assert _ids(replies) == ["id-0", "id-1", "id-2"]
    assert slow.pulls == 4  # no poll after the last reply


def test_a_timeout_returns_the_replies_received_so_far() -> None:
    slow = SlowGrid([1, -1])
    assert _ids(PromptGrid(slow).send_and_receive([0, 1], timeout=0.05)) == ["id-0"]


def test_other_calls_go_to_the_wrapped_grid() -> None:
    grid = PromptGrid(SlowGrid([]))
    assert list(grid.get_node_ids()) == [1, 2]
    assert grid.run == "run"
