"""Reply validation raises exactly where Flower's own validation does."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from client.payload import numpy_array
from strategies.replies import check_consistent

RECORDS = {
    "w": ArrayRecord({"w": numpy_array(np.ones(2))}),
    "v": ArrayRecord({"v": numpy_array(np.ones(2))}),
    "wv": ArrayRecord({"w": numpy_array(np.ones(2)), "v": numpy_array(np.ones(2))}),
    "n": MetricRecord({"num-examples": 3, "loss": 0.5}),
    "no-n": MetricRecord({"loss": 0.5}),
    "n-list": MetricRecord({"num-examples": [3, 4]}),
    "n-more": MetricRecord({"num-examples": 3, "x": 1.0}),
    "cfg": ConfigRecord({"x": 1}),
}
#: Reply contents as the records they hold (record key -> RECORDS name).
SHAPES = [
    {"arrays": "w", "metrics": "n"}, {"arrays": "v", "metrics": "n"}, {"arrays": "wv", "metrics": "n"},
    {"arrays": "w", "metrics": "no-n"}, {"arrays": "w", "metrics": "n-list"},
    {"arrays": "w", "metrics": "n-more"}, {"metrics": "n"}, {"arrays": "w"},
    {"arrays": "w", "metrics": "n", "more": "n"}, {"arrays": "w", "config": "cfg", "metrics": "n"},
    {"arrays": "w", "more": "w", "metrics": "n"},
]


def _raises(check, contents: list[RecordDict], check_arrays: bool) -> bool:
    try:
        check(contents, "num-examples", check_arrays)
    except InconsistentMessageReplies:
        return True
    return False


@pytest.mark.parametrize("check_arrays", [True, False])
def test_same_verdict_as_flower_on_every_pair_of_reply_shapes(check_arrays):
    verdicts = set()
    for first, second in itertools.product(SHAPES, repeat=2):
        contents = [RecordDict({k: RECORDS[v] for k, v in shape.items()}) for shape in (first, second)]
        want = _raises(validate_message_reply_consistency, contents, check_arrays)
        assert _raises(check_consistent, contents, check_arrays) == want, (first, second)
        verdicts.add(want)
    assert verdicts == {True, False}
