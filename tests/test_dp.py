"""Central DP (server/privacy.py + client/privacy.py): ε per round, clipping, utility.

Oracles: ε from Google's dp-accounting RDP accountant composed by hand with the noise
multiplier the weights imply; chance F1 from scikit-learn on each site's own test labels.
"""

from __future__ import annotations

import numpy as np
import pytest
from dp_accounting import dp_event, rdp
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from sklearn.metrics import f1_score

from client.feature_store import read_entry
from client.local import site_task
from client.privacy import clip_if_requested
from server.app import FederatedSettings
from server.privacy import privatize
from sim.federated import run_inprocess
from sim.runner import write_synthetic_store

SITES = ("CBIS-DDSM", "KAU-BCMD", "LBMD")


@pytest.fixture(scope="module")
def store(tmp_path_factory, sites):
    root = tmp_path_factory.mktemp("dp") / "store"
    return write_synthetic_store(root, [s for s in sites if s.name in SITES], ["mammoclip"], 0.1, 0,
                                 show_progress=False)


def _settings(store, out, **kw) -> FederatedSettings:
    base = dict(store=str(store), fm="mammoclip", task="density", method="unified", sites=SITES,
                out=str(out), num_rounds=3, local_steps=10)
    return FederatedSettings(**(base | kw))


def _expected_eps(z_eff: float, rounds: int, delta: float) -> list[float]:
    out = []
    for r in range(1, rounds + 1):
        acc = rdp.RdpAccountant()
        acc.compose(dp_event.GaussianDpEvent(z_eff), r)
        out.append(acc.get_epsilon(delta))
    return out


def test_epsilon_per_round_and_training_above_chance(store, tmp_path, monkeypatch):
    monkeypatch.setattr("server.privacy.NOISE_SEED", 0)
    noise, clip, delta, rounds = 0.5, 0.2, 1e-4, 5
    h = run_inprocess(_settings(store, tmp_path / "dp", dp_noise=noise, dp_clip=clip, dp_delta=delta,
                                num_rounds=rounds))
    eps = h[h.metric == "dp_epsilon"].sort_values("round")
    assert list(eps["round"]) == list(range(1, rounds + 1)) and set(eps["site"]) == {"all"}
    # FedAvg weights sites by training examples: the largest weight sets the sensitivity.
    n = np.array([len(site_task(read_entry(store, "mammoclip", s), "density", 0).train) for s in SITES])
    z_eff = noise / (len(SITES) * n.max() / n.sum())
    np.testing.assert_allclose(eps["value"].to_numpy(), _expected_eps(z_eff, rounds, delta), rtol=1e-6)
    assert np.all(np.diff(eps["value"].to_numpy()) > 0)

    f1 = h[(h.metric == "f1") & (h["class"] == "macro") & (h.site != "all") & (h["round"] == rounds)]
    assert set(f1["site"]) == set(SITES)
    rng = np.random.default_rng(0)
    chance = []
    for s in SITES:
        y = site_task(read_entry(store, "mammoclip", s), "density", 0).test_y
        # A predictor that ignores the features: the site's labels in random order.
        chance.append(np.mean([f1_score(y, rng.permutation(y), average="macro") for _ in range(20)]))
    assert f1["value"].mean() > np.mean(chance) + 0.04


def test_dp_off_adds_no_epsilon_and_bad_keys_are_refused(store, tmp_path):
    h = run_inprocess(_settings(store, tmp_path / "plain", num_rounds=1))
    assert "dp_epsilon" not in set(h.metric)
    with pytest.raises(ValueError, match="dp-clip"):
        privatize(None, _settings(store, tmp_path, dp_noise=1.0, dp_clip=0.0))  # type: ignore[arg-type]


def test_client_clips_its_update_only_when_asked():
    sent = {"w": np.zeros(4, dtype=np.float32)}
    update = np.array([3.0, 4.0, 0.0, 0.0], dtype=np.float32)  # norm 5

    def app(msg: Message, ctx: Context) -> Message:
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(sent["w"] + update)}),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    def reply(cfg: dict[str, object]) -> np.ndarray:
        content = RecordDict({"arrays": ArrayRecord({"w": Array(sent["w"])}), "config": ConfigRecord(cfg)})
        msg = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
        ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
        return clip_if_requested(msg, ctx, app).content["arrays"]["w"].numpy()

    np.testing.assert_allclose(reply({}), update)
    np.testing.assert_allclose(reply({"clipping_norm": 1.0}), update / 5.0, rtol=1e-6)
