"""What a site sends: its size does not depend on the site's number of patients, and no
patient or scan identifier is in it.

The real ServerApp drives the real ClientApp through the in-process grid, with nodes
configured as deployed SuperNodes are (``site``, ``data-path``); every reply is
serialised with Flower's own protobuf serde — the bytes a SuperNode puts on the wire —
and scanned for the manifest's identifiers.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import recorddict_to_proto
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from server.app import FederatedSettings, run_server
from sim.federated import InProcessGrid
from sim.runner import write_synthetic_store

SITES = ("INbreast", "LBMD")


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping the wire bytes of every reply."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, str, str, bytes]] = []  # (site, type, group, payload)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        messages = list(messages)
        ids = list(super().push_messages(messages))
        for msg, mid in zip(messages, ids, strict=True):
            site = str(self.contexts[msg.metadata.dst_node_id].node_config["site"])
            reply = self._replies[mid]
            assert not reply.has_error(), reply.error.reason
            payload = recorddict_to_proto(reply.content).SerializeToString()
            self.sent.append((site, reply.metadata.message_type, msg.metadata.group_id, payload))
        return ids


def _federate(store, out) -> tuple[list[tuple[str, str, str, bytes]], pd.DataFrame]:
    nodes = [{"site": s, "data-path": str(store)} for s in SITES]
    grid = RecordingGrid(client_app, nodes, seed=0)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = grid.run.run_id, SUPERLINK_NODE_ID, 1
    run_server(grid, FederatedSettings(store="", fm="medclip", task="density", method="groupdro",
                                       sites=SITES, out=str(out), num_rounds=2, local_steps=3))
    manifests = pd.concat([pd.read_parquet(store / "medclip" / s / "index.parquet") for s in SITES])
    return grid.sent, manifests


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sites):
    chosen = [s for s in sites if s.name in SITES]
    out = {}
    for scale in (0.05, 0.3):
        root = tmp_path_factory.mktemp(f"scale{scale}")
        store = write_synthetic_store(root / "store", chosen, ["medclip"], scale, 0, show_progress=False)
        out[scale] = _federate(store, root / "out")
    return out


def test_sites_differ_in_size(runs):
    small, large = (runs[s][1].groupby("site").size() for s in (0.05, 0.3))
    assert (large >= 4 * small).all()


def test_payload_size_does_not_grow_with_patients(runs):
    small, large = ({(site, kind, group): len(b) for site, kind, group, b in runs[s][0]} for s in (0.05, 0.3))
    assert set(small) == set(large)
    assert {kind for _, kind, _ in small} == {"query", "train", "evaluate"}
    for key, n in small.items():
        # Integers are protobuf varints: a count may take one byte more, never more.
        assert abs(large[key] - n) <= 8, (key, n, large[key])


def test_payload_holds_no_identifier(runs):
    for sent, manifest in runs.values():
        ids = set(manifest["patient_id"]) | set(manifest["scan_id"])
        assert len(ids) > 100
        for site, kind, _group, payload in sent:
            leaked = [i for i in ids if i.encode() in payload]
            assert not leaked, f"{site} {kind} reply holds {leaked[:3]}"


@pytest.mark.parametrize("array", [
    np.arange(8192, dtype=np.float32).reshape(4, 2048), np.arange(12).reshape(3, 4),
    np.asfortranarray(np.arange(15.0).reshape(3, 5)), np.array(3.5), np.zeros((0, 3), np.float32),
    np.arange(6.0).reshape(2, 3).astype(">f8"), np.arange(7, dtype=np.float16)])
def test_fast_array_decoding_equals_flowers(array):
    from flwr.app import Array

    from client.payload import array_numpy

    wire = Array(array)
    ours, flowers = array_numpy(wire), wire.numpy()
    assert ours.dtype == flowers.dtype and ours.shape == flowers.shape
    np.testing.assert_array_equal(ours, flowers)
    assert ours.flags.writeable  # a copy, like np.load's: callers may write into it
    ours[...] = 0
    np.testing.assert_array_equal(wire.numpy(), array)


@pytest.mark.parametrize("value", [
    np.random.default_rng(0).normal(size=(4, 2048)).astype(np.float32), np.arange(6).reshape(2, 3),
    np.float64(3.5), np.zeros((0, 3), np.float16), np.array([True, False]), np.zeros(2, dtype=">i4"),
    np.random.default_rng(1).normal(size=(3, 4))[:, ::2], np.asfortranarray(np.ones((3, 4))),
])
def test_numpy_array_stores_what_flower_stores(value):
    from flwr.app import Array

    from client.payload import array_numpy, numpy_array

    value = np.asarray(value)
    ours, flower = numpy_array(value), Array(value)
    assert (ours.dtype, ours.shape, ours.stype) == (flower.dtype, flower.shape, flower.stype)
    if value.flags.c_contiguous:
        assert ours.data == flower.data  # byte for byte what np.save writes
    np.testing.assert_array_equal(ours.numpy(), value)
    np.testing.assert_array_equal(array_numpy(ours), value)


def test_numpy_record_takes_a_torch_state_dict():
    from client.payload import numpy_record, record_tensors

    state = torch.nn.Linear(5, 3).state_dict()
    back = record_tensors(numpy_record(state))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
