"""The federated engine in process: equivalence with pooled GD, payloads, faults, resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from client.feature_store import Provenance, read_entry, write_entry
from server.app import FederatedSettings
from sim.federated import run_inprocess
from sim.runner import write_synthetic_store
from strategies.base import TaskSpec, get_method
from strategies.core import HParams, class_weights, concat, fit_epochs

FM = "medclip"


@pytest.fixture(scope="module")
def store(tmp_path_factory, sites):
    root = tmp_path_factory.mktemp("fstore")
    write_synthetic_store(root, sites, [FM], 0.06, 0, show_progress=False)
    return root


def _settings(store, out, sites, **kw):
    base = dict(store=str(store), fm=FM, task="density", method="unified",
                sites=tuple(s.name for s in sites), out=str(out), num_rounds=3, local_epochs=1)
    return FederatedSettings(**(base | kw))


def test_every_site_reports_every_round(store, tmp_path, sites):
    h = run_inprocess(_settings(store, tmp_path, sites))
    f1 = h[(h.metric == "f1") & (h["class"] == "macro") & (h.site != "all")]
    labelled = {s.name for s in sites if s.has_label("density")}
    for rnd in (1, 2, 3):
        assert set(f1[f1["round"] == rnd]["site"]) == labelled
    assert set(h["mode"]) == {"federated"} and (h[h.metric == "n_missing"]["value"] == 0).all()
    assert (tmp_path / "metrics.parquet").exists() and (tmp_path / "final.npz").exists()


def _iid_store(root, n_sites=4, seed=0):
    """Shards of one synthetic site's rows, split at random: every site has the same distribution."""
    from sim.sites import load_sites
    from sim.synthetic import PROFILES, site_features, site_manifest

    site = load_sites()[1]
    m = site_manifest(site, 0.05, seed)
    m = m[m["density"].notna()].reset_index(drop=True)
    x = site_features(m, 1, PROFILES[FM], seed)[m.index]
    shard = np.random.default_rng(seed).integers(0, n_sites, len(m))
    names = []
    for k in range(n_sites):
        part = m[shard == k].assign(site=f"S{k}").reset_index(drop=True)
        prov = Provenance(FM, f"S{k}", x.shape[1], len(part), "synthetic", "iid")
        write_entry(root, part, x[shard == k], prov)
        names.append(f"S{k}")
    return names


def test_fedavg_one_full_batch_sgd_step_equals_pooled_gradient_descent(tmp_path):
    names = _iid_store(tmp_path / "store")
    rounds, lr = 3, 0.05
    s = FederatedSettings(store=str(tmp_path / "store"), fm=FM, task="density", method="unified",
                          sites=tuple(names), out=str(tmp_path / "out"), num_rounds=rounds, local_epochs=1,
                          batch_size=100_000, lr=lr, method_overrides={"optimizer": "sgd"})
    run_inprocess(s)
    fed = np.load(tmp_path / "out" / "final.npz")
    from client.local import site_task

    data = concat([site_task(read_entry(tmp_path / "store", FM, n), "density", d).train
                   for d, n in enumerate(names)])
    cls = get_method("unified")
    config = cls.config_cls(optimizer="sgd")
    torch.manual_seed(0)  # the server initialises the global model with the run's seed
    model = cls(TaskSpec(data.x.shape[1], 4, len(names), class_weights(data.y, 4)), config)
    model.configure_optimizer(lr)
    fit_epochs(model, data, HParams(100_000, lr, rounds), seed=0)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(fed[name], value.numpy(), atol=1e-6, rtol=0)


def _reply_bytes(msg) -> int:
    """Bytes of every array and metric value in a reply's content."""
    total = 0
    for record in msg.content.values():
        for value in record.values():
            total += value.numpy().nbytes if hasattr(value, "numpy") else np.asarray(value).nbytes
    return total


def test_client_replies_do_not_grow_with_scans_nor_carry_ids(tmp_path):
    """The real ClientApp's train and evaluate replies for a site of 100 and of 10 000 test scans."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import app, build_model

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    rng = np.random.default_rng(0)
    sizes, ids = {}, set()
    for n in (100, 10_000):
        m = pd.DataFrame({"site": "H", "patient_id": [f"H/P{i:06d}" for i in range(n)],
                          "scan_id": [f"H/P{i:06d}/L_CC" for i in range(n)], "view": "CC",
                          "laterality": "L", "age": rng.uniform(30, 85, n),
                          "density": rng.choice(list("ABCD"), n), "diagnosis": None,
                          "split": np.where(np.arange(n) % 2 == 0, "train", "test")})
        x = rng.normal(size=(n, 16)).astype(np.float32)
        write_entry(tmp_path / f"s{n}", m, x, Provenance("tiny", "H", 16, n, "synthetic", "t"))
        ids |= set(m["patient_id"]) | set(m["scan_id"])
        cfg = {"method": "unified", "fm": "tiny", "task": "density", "n-domains": 1, "domain": 0,
               "class-weights": [1.0] * 4, "method-config": "{}", "local-epochs": 1, "local-steps": 0,
               "batch-size": 32, "lr": 1e-3, "seed": 0, "server-round": 1, "progress-start": 0.0,
               "progress-end": 1.0, "fault-rate": 0.0}
        arrays = ArrayRecord(build_model(ConfigRecord(cfg), 16).state_dict())
        ctx = Context(run_id=1, node_id=7, node_config={"site": "H", "data-path": str(tmp_path / f"s{n}")},
                      state=RecordDict(), run_config={})
        for kind in (MessageType.TRAIN, MessageType.EVALUATE):
            msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord(cfg)}), dst_node_id=7,
                          message_type=kind)
            reply = app(msg, ctx)
            sizes.setdefault(kind, []).append(_reply_bytes(reply))
            text = repr(reply.content)
            assert not any(i in text for i in list(ids)[:200] + ["H/P000001"])
    assert sizes[MessageType.TRAIN][0] == sizes[MessageType.TRAIN][1]
    assert sizes[MessageType.EVALUATE][0] == sizes[MessageType.EVALUATE][1]


def test_faulty_clients_are_marked_missing_never_averaged(store, tmp_path, sites):
    h = run_inprocess(_settings(store, tmp_path, sites, num_rounds=5, fault_rate=0.3, seed=3))
    eval_missing = h[h.metric == "eval_missing"]
    assert len(eval_missing) > 0, "with a 30 % fault rate some site-rounds must fail"
    for rnd, part in h.groupby("round"):
        gone = set(eval_missing[eval_missing["round"] == rnd]["site"])
        f1 = part[(part.metric == "f1") & (part["class"] == "macro") & (part.site != "all")]
        assert not gone & set(f1["site"])  # a missing site has no F1 that round
        assert part[part.metric == "n_missing"]["value"].item() == len(gone)
        mean = part[part.metric == "f1_mean"]["value"]
        if len(f1):
            assert abs(mean.item() - f1["value"].mean()) < 1e-12  # over reporting sites only
    assert set(h[h.metric == "train_missing"]["site"]) <= {s.name for s in sites}


def test_resume_reaches_the_same_final_parameters(store, tmp_path, sites, monkeypatch):
    full = _settings(store, tmp_path / "full", sites, num_rounds=4)
    run_inprocess(full)
    import server.app as server_app

    original = server_app.Checkpointer.__call__

    def crash_after_two(self, server_round):
        original(self, server_round)
        if server_round == 2:
            raise KeyboardInterrupt("simulated crash after round 2")

    monkeypatch.setattr(server_app.Checkpointer, "__call__", crash_after_two)
    part = _settings(store, tmp_path / "part", sites, num_rounds=4, checkpoint_every_s=0)
    with pytest.raises(KeyboardInterrupt):
        run_inprocess(part)
    monkeypatch.setattr(server_app.Checkpointer, "__call__", original)
    h = run_inprocess(_settings(store, tmp_path / "part", sites, num_rounds=4, resume=True))
    a, b = np.load(tmp_path / "full" / "final.npz"), np.load(tmp_path / "part" / "final.npz")
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])
    assert sorted(h["round"].dropna().unique()) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(h, pd.read_parquet(tmp_path / "full" / "metrics.parquet"))


def test_history_part_of_an_unfinished_checkpoint_is_ignored(store, tmp_path, sites, monkeypatch):
    # A crash after round 3's history part is written but before its state lands: the
    # resume continues from round 2 and must not count round 3's first attempt twice.
    import server.app as server_app

    full = run_inprocess(_settings(store, tmp_path / "full", sites, num_rounds=4))
    original, calls = server_app.atomic_dir, []

    def crash_on_third(folder, fill):
        calls.append(folder)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash while checkpointing round 3")
        return original(folder, fill)

    monkeypatch.setattr(server_app, "atomic_dir", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_inprocess(_settings(store, tmp_path / "part", sites, num_rounds=4, checkpoint_every_s=0))
    assert (tmp_path / "part" / server_app.HISTORY_PARTS / "round-00003.arrow").is_file()
    monkeypatch.setattr(server_app, "atomic_dir", original)
    h = run_inprocess(_settings(store, tmp_path / "part", sites, num_rounds=4, resume=True))
    pd.testing.assert_frame_equal(h, full)
    # A fresh run in the same folder starts its history from scratch.
    again = run_inprocess(_settings(store, tmp_path / "part", sites, num_rounds=2, checkpoint_every_s=0))
    assert sorted(again["round"].dropna().unique()) == [1, 2]
    parts = sorted(p.name for p in (tmp_path / "part" / server_app.HISTORY_PARTS).iterdir())
    assert parts == ["round-00001.arrow", "round-00002.arrow"]


@pytest.mark.slow
def test_federated_unified_is_close_to_pooled_on_the_quick_config(tmp_path):
    from dataclasses import replace
    from pathlib import Path

    from sim.experiment import load_experiment
    from sim.runner import run_pooled_experiment
    from sim.simulate import run_federated_experiment

    quick = load_experiment(Path(__file__).parent.parent / "configs" / "experiments" / "quick.toml")
    exp = replace(quick, study=replace(quick.study, tasks=("density",), methods=("unified",),
                                       individual=False),
                  federated=replace(quick.federated, methods=("unified",)))
    pooled = run_pooled_experiment(exp, tmp_path / "p", show_progress=False).metrics
    exp = replace(exp, data=replace(exp.data, store=str(tmp_path / "p" / "store")))
    fed = run_federated_experiment(exp, tmp_path / "f", show_progress=False)
    from server.compare import compare

    row = compare(pooled, fed).iloc[0]
    assert abs(row["federated_mean"] - row["pooled_mean"]) < 0.05, row.to_dict()


@pytest.mark.slow
def test_federated_groupdro_protects_the_worst_site(tmp_path, sites):
    """On the quick config's data (density): worst-site F1 of federated GroupDRO ≥ FedAvg's − 0.02."""
    store = tmp_path / "store"
    write_synthetic_store(store, sites, ["mammoclip"], 0.25, 0, show_progress=False)
    worst = {}
    for method in ("unified", "groupdro"):
        s = FederatedSettings(store=str(store), fm="mammoclip", task="density", method=method,
                              sites=tuple(x.name for x in sites), out=str(tmp_path / method),
                              num_rounds=40, local_steps=25)
        h = run_inprocess(s)
        last = h[h["round"] == h["round"].max()]
        worst[method] = last[last.metric == "f1_worst"]["value"].item()
        if method == "groupdro":
            w = last[last.metric == "site_weight"]["value"]
            assert abs(w.sum() - 1) < 1e-9 and w.max() > 1.5 / len(w)  # the weights moved
    assert worst["groupdro"] >= worst["unified"] - 0.02, worst


def test_checkpoints_follow_their_interval_and_the_last_round_is_always_saved(store, tmp_path, sites):
    import server.app as server_app

    rare = _settings(store, tmp_path / "rare", sites, num_rounds=4, checkpoint_every_s=3600)
    h = run_inprocess(rare)
    parts = list((tmp_path / "rare" / server_app.HISTORY_PARTS).iterdir())
    assert [p.name for p in parts] == ["round-00004.arrow"]  # one part: every round's rows
    assert json.loads((tmp_path / "rare" / "checkpoint" / "state.json").read_text())["round"] == 4
    pd.testing.assert_frame_equal(server_app.read_history_part(parts[0]), h)


def test_a_background_writer_checkpoints_the_same_files(store, tmp_path, sites, monkeypatch):
    """Remote engines write checkpoints on a thread; the files equal those written in place."""
    import server.app as server_app
    import sim.federated as fed

    monkeypatch.setattr(fed.InProcessGrid, "in_process", False)
    threaded = run_inprocess(_settings(store, tmp_path / "bg", sites, checkpoint_every_s=0))
    monkeypatch.undo()
    in_place = run_inprocess(_settings(store, tmp_path / "fg", sites, checkpoint_every_s=0))
    pd.testing.assert_frame_equal(threaded, in_place)
    for name in ("bg", "fg"):
        assert len(server_app.history_parts(tmp_path / name)) == 3
    with np.load(tmp_path / "bg" / "checkpoint" / "arrays.npz") as a, \
            np.load(tmp_path / "fg" / "checkpoint" / "arrays.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
