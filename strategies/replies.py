"""Sorting out the clients' replies: errors logged, contents checked for aggregation.

The same checks as Flower's ``FedAvg._check_and_log_replies`` and
``validate_message_reply_consistency`` (``serverapp/strategy/strategy_utils.py``): one
ArrayRecord (training replies) and one MetricRecord per reply, the same keys in every
reply, and a scalar weighting key. Flower reaches each reply's records through
``RecordDict.array_records``/``metric_records``, which build a checked dictionary per
call — most of a round's server time at ten sites; here they are read directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies

log = logging.getLogger("flwr")


def _only(content: RecordDict, kind: type) -> list[tuple[str, object]]:
    return [(k, v) for k, v in content.items() if isinstance(v, kind)]


def _same_keys(contents: list[RecordDict], kind: type, what: str) -> set[str]:
    """The keys of each content's one record of ``kind``, which must be one and agree."""
    records = [_only(c, kind) for c in contents]
    if any(len(r) != 1 for r in records):
        raise InconsistentMessageReplies(
            reason=f"Expected exactly one {what} in replies. Skipping aggregation.")
    keys = set(records[0][0][1])
    if any(set(r[0][1]) != keys for r in records[1:]):
        raise InconsistentMessageReplies(
            reason=f"All {what}s must have the same keys for aggregation. This condition wasn't met. "
                   "Skipping aggregation.")
    return keys


def check_consistent(contents: list[RecordDict], weighted_by_key: str, check_arrays: bool) -> None:
    """Raise ``InconsistentMessageReplies`` where Flower's reply validation would.

    Parameters
    ----------
    contents : list of RecordDict
        The replies' contents (at least one).
    weighted_by_key : str
        The MetricRecord key that weights the average (a scalar in every reply).
    check_arrays : bool
        Whether each reply must carry one ArrayRecord with the same keys (training).
    """
    if check_arrays:
        _same_keys(contents, ArrayRecord, "ArrayRecord")
    keys = _same_keys(contents, MetricRecord, "MetricRecord")
    if weighted_by_key not in keys:
        raise InconsistentMessageReplies(
            reason=f"Missing required key `{weighted_by_key}` in the MetricRecord of reply messages. "
                   "Cannot average ArrayRecords and MetricRecords. Skipping aggregation.")
    if any(isinstance(_only(c, MetricRecord)[0][1][weighted_by_key], list) for c in contents):
        raise InconsistentMessageReplies(
            reason=f"Key `{weighted_by_key}` in the MetricRecord of reply messages must be a single value "
                   "(int or float), but a list was found. Skipping aggregation.")


def valid_replies(replies: Iterable[Message], is_train: bool, weighted_by_key: str) -> list[Message]:
    """The replies without an error (errors are logged), checked with `check_consistent`."""
    valid = []
    for msg in replies:
        if msg.has_error():
            log.info("\t> Received error in reply from node %d: %s", msg.metadata.src_node_id,
                     msg.error.reason)
        else:
            valid.append(msg)
    if valid:
        check_consistent([m.content for m in valid], weighted_by_key, check_arrays=is_train)
    return valid
