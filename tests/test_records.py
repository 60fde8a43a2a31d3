"""Records built and copied without Flower's per-entry checks equal Flower's own."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.payload import load_record, numpy_array, numpy_record, record_tensors
from client.records import array_record, copy_message, copy_record, make_array, record_dict, with_entries


@pytest.fixture(autouse=True)
def _identity():
    # Message() reads the sender from process-wide state the engines set (as run_inprocess does).
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1


def _record_fields(record):
    """Everything a record holds, Arrays as their fields (Array has no value equality)."""
    return {k: vars(v) if isinstance(v, Array) else v for k, v in record.items()}


def test_make_array_is_what_the_public_constructor_builds():
    data = numpy_array(np.arange(6, dtype=np.float32).reshape(2, 3)).data
    fast = make_array("float32", (2, 3), "numpy.ndarray", data)
    slow = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=data)
    assert vars(fast) == vars(slow)
    np.testing.assert_array_equal(fast.numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_array_record_and_record_dict_equal_flowers_and_check_like_flower():
    arrays = {"w": numpy_array(np.ones((2, 2))), "b": numpy_array(np.zeros(2, dtype=np.int64))}
    fast, slow = array_record(arrays), ArrayRecord(arrays)
    assert type(fast) is ArrayRecord and list(fast) == list(slow)
    assert _record_fields(fast) == _record_fields(slow)
    metrics = MetricRecord({"n": 3})
    assert dict(record_dict({"arrays": fast, "metrics": metrics})) == dict(
        RecordDict({"arrays": fast, "metrics": metrics}))
    with pytest.raises(TypeError):
        array_record({"w": np.ones(2)})
    with pytest.raises(TypeError):
        record_dict({"x": {"not": "a record"}})
    with pytest.raises(TypeError):
        array_record({3: arrays["w"]})


def _train_message() -> Message:
    content = RecordDict({"arrays": numpy_record({"w": torch.randn(3, 4), "b": torch.zeros(3)}),
                          "config": ConfigRecord({"lr": 0.1, "weights": [1.0, 2.0], "name": "site-a"}),
                          "metrics": MetricRecord({"n": 5, "losses": [0.5, 0.25]})})
    return Message(content=content, message_type="train", dst_node_id=42, group_id="3")


def test_copy_message_equals_a_pickle_round_trip():
    msg = _train_message()
    copied, wired = copy_message(msg), pickle.loads(pickle.dumps(msg))  # noqa: S301 - own bytes
    assert vars(copied.metadata) == vars(wired.metadata)
    assert list(copied.content) == list(wired.content)
    for name in wired.content:
        assert _record_fields(copied.content[name]) == _record_fields(wired.content[name]), name
    error = Message(Error(code=3, reason="boom"), reply_to=msg)
    assert vars(copy_message(error).error) == vars(error.error)
    assert not copy_message(error).has_content()


def test_a_copied_message_shares_nothing_mutable():
    msg = _train_message()
    copied = copy_message(msg)
    copied.content["config"]["weights"].append(9.0)
    copied.content["config"]["lr"] = 0.2
    copied.content["metrics"]["losses"][0] = 1.0
    copied.content["arrays"]["w"].shape = (12,)
    copied.content["extra"] = ConfigRecord({"x": 1})
    copied.metadata.group_id = "4"
    assert msg.content["config"]["weights"] == [1.0, 2.0] and msg.content["config"]["lr"] == 0.1
    assert msg.content["metrics"]["losses"] == [0.5, 0.25]
    assert tuple(msg.content["arrays"]["w"].shape) == (3, 4)
    assert "extra" not in msg.content and msg.metadata.group_id == "3"


def test_with_entries_checks_what_it_adds_and_leaves_the_base_alone():
    base = ConfigRecord({"lr": 0.1, "round": 2})
    site = with_entries(base, {"domain": 3})
    assert dict(site) == {"lr": 0.1, "round": 2, "domain": 3} and dict(base) == {"lr": 0.1, "round": 2}
    with pytest.raises(TypeError):
        with_entries(base, {"domain": np.ones(2)})
    assert dict(copy_record(base)) == dict(base)


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


@pytest.mark.parametrize("plain", [True, False])
def test_load_record_equals_load_state_dict(plain, monkeypatch):
    torch.manual_seed(0)
    source = torch.nn.Linear(5, 3) if plain else _model()  # BatchNorm customises loading: fallback
    record = numpy_record(source.state_dict())
    fast = torch.nn.Linear(5, 3) if plain else _model()
    slow = torch.nn.Linear(5, 3) if plain else _model()
    slow.load_state_dict(record_tensors(record))
    if plain:  # the fast path must be the one taken
        monkeypatch.setattr(torch.nn.Module, "load_state_dict", None)
    load_record(fast, record)
    for (k, a), (_, b) in zip(fast.state_dict().items(), slow.state_dict().items(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, source.state_dict()[k]), k


def test_load_record_falls_back_and_fails_like_load_state_dict():
    source = torch.nn.Linear(5, 3)
    fortran = ArrayRecord({"weight": Array(np.asfortranarray(source.weight.detach().numpy())),
                           "bias": numpy_array(source.bias)})  # an unusual header: Flower parses it
    target = torch.nn.Linear(5, 3)
    load_record(target, fortran)
    assert torch.equal(target.weight, source.weight)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_record(torch.nn.Linear(5, 4), numpy_record(source.state_dict()))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_record(torch.nn.Linear(5, 3), numpy_record({"weight": source.weight}))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_record(torch.nn.Linear(5, 3), numpy_record(source.state_dict() | {"extra": torch.ones(1)}))


def test_save_record_writes_what_np_savez_writes(tmp_path):
    from client.payload import save_record

    values = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.array(5, dtype=np.int64),
              "f": np.asfortranarray(np.ones((2, 3)))}
    record = ArrayRecord({k: Array(v) for k, v in values.items()})  # Fortran order: re-encoded
    save_record(tmp_path / "a.npz", record)
    np.savez(tmp_path / "b.npz", **values)
    with np.load(tmp_path / "a.npz") as got, np.load(tmp_path / "b.npz") as want:
        assert got.files == want.files
        for k in want.files:
            np.testing.assert_array_equal(got[k], want[k])
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
