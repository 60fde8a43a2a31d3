"""The Flower ClientApp: one hospital site, its features, the method's local update.

A node learns its site from ``node_config`` (``site``, ``data-path``; deployment) or,
in simulation where nodes only get ``partition-id``, from the site list and store path
the server sends. It replies with model arrays and aggregate numbers only: example
counts, losses and per-subgroup confusion counts of a fixed size — never features,
identifiers or per-sample outputs.
"""

from __future__ import annotations

import json
import zlib
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.evaluation import site_counts
from client.extract import node_store
from client.feature_store import read_entry
from client.local import SiteTask, site_task
from client.payload import encode_counts, record_tensors
from client.privacy import clip_if_requested
from client.schema import SENSITIVE_SIZES, task_classes
from sim.config import build
from strategies.base import Method, TaskSpec, get_method, seed_torch, weighted_cross_entropy
from strategies.core import HParams, fit_epochs, fit_steps, predict

app = ClientApp()


def node_site(context: Context, config: ConfigRecord) -> tuple[str, str]:
    """Return the node's (site, store path): node_config first, else the server's lists."""
    nc = context.node_config
    if "site" in nc:
        return str(nc["site"]), str(nc.get("data-path", config.get("store", "")))
    sites = str(config["sites"]).split(",")
    return sites[int(nc["partition-id"])], str(config["store"])


# One entry per (site, task) a process serves: in-process simulations hold every site.
@lru_cache(maxsize=4096)
def _local(store: str, fm: str, site: str, task: str, domain: int) -> SiteTask | None:
    """The site's rows for a task, loaded once per process (the store is read-only)."""
    return site_task(read_entry(store, fm, site), task, domain)


def _data(context: Context, cfg: ConfigRecord) -> tuple[str, SiteTask | None]:
    site, store = node_site(context, cfg)
    store = node_store(context.node_config, store, str(cfg["fm"]), site)  # prepared folder: extract once
    return site, _local(store, str(cfg["fm"]), site, str(cfg["task"]), int(cfg.get("domain", 0)))


def build_model(cfg: ConfigRecord, in_dim: int) -> Method:
    """The method's model as the server configured it (global class weights, domains)."""
    cls = get_method(str(cfg["method"]))
    config = build(cls.config_cls, json.loads(str(cfg.get("method-config", "{}"))), "method-config")
    n_domains = int(cfg["n-domains"])
    n_groups = n_domains if config.sensitive == "site" else SENSITIVE_SIZES[config.sensitive]
    weights = tuple(float(w) for w in cfg["class-weights"])
    spec = TaskSpec(in_dim, len(task_classes(str(cfg["task"]))), n_domains, weights, n_groups)
    return cls(spec, config)


def _seed(cfg: ConfigRecord, site: str) -> int:
    return zlib.crc32(f"{cfg['seed']}|{cfg['server-round']}|{site}".encode())


def _maybe_fail(cfg: ConfigRecord, site: str) -> None:
    """Fault injection for resilience tests: fail a seeded fraction of (site, round)s."""
    rate = float(cfg.get("fault-rate", 0.0))
    if rate > 0 and (_seed(cfg, site) % 10_000) / 10_000 < rate:
        raise RuntimeError(f"injected fault at site {site}, round {cfg['server-round']}")


def _label_loss(model: Method, data: SiteTask) -> float:
    """Weighted CE of the label head on the local training rows (no gradient)."""
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(data.train.x, dtype=np.float32))
        y = torch.from_numpy(data.train.y)
        return float(weighted_cross_entropy(model.eval()(x), y, model.class_weights))


def _received(msg: Message, context: Context) -> tuple[ConfigRecord, str, SiteTask, Method]:
    """The message's config, this node's site and rows, and the global model it was sent."""
    cfg = msg.content["config"]
    site, data = _data(context, cfg)
    _maybe_fail(cfg, site)
    if data is None:
        raise ValueError(f"site {site} has no labelled rows for task {cfg['task']}")
    model = build_model(cfg, data.train.x.shape[1])
    model.load_state_dict(record_tensors(msg.content["arrays"]))
    return cfg, site, data, model


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this node's site and aggregate label counts (no identifiers)."""
    cfg = msg.content["config"]
    site, data = _data(context, cfg)
    n_classes = len(task_classes(str(cfg["task"])))
    counts = np.bincount(data.train.y, minlength=n_classes) if data else np.zeros(n_classes, int)
    info = {"site": site, "n-train": int(counts.sum()), "n-test": len(data.test_y) if data else 0,
            "dim": int(data.train.x.shape[1]) if data else 0, "class-counts": [int(c) for c in counts]}
    return Message(RecordDict({"info": ConfigRecord(info)}), reply_to=msg)


@app.train(mods=[clip_if_requested])
def train(msg: Message, context: Context) -> Message:
    """Run the method's local update for the configured epochs from the global model."""
    cfg, site, data, model = _received(msg, context)
    model.begin_round(dict(cfg))
    global_loss = _label_loss(model, data)
    model.configure_optimizer(float(cfg["lr"]))
    hp = HParams(int(cfg["batch-size"]), float(cfg["lr"]), int(cfg["local-epochs"]))
    seed_torch(_seed(cfg, site))
    span = {"start": float(cfg["progress-start"]), "end": float(cfg["progress-end"])}
    if int(cfg.get("local-steps", 0)) > 0:
        fit_steps(model, data.train, hp, int(cfg["local-steps"]), _seed(cfg, site), **span)
    else:
        fit_epochs(model, data.train, hp, _seed(cfg, site), **span)
    metrics = {"num-examples": len(data.train), "train_loss": _label_loss(model, data),
               "global-loss": global_loss} | model.round_metrics()
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Confusion counts of the global model on the local test split, per subgroup."""
    cfg, site, data, model = _received(msg, context)
    n_classes = len(task_classes(str(cfg["task"])))
    counts = site_counts(site, data.test_y, predict(model, data.test_x), n_classes, data.test_groups)
    return Message(RecordDict({"arrays": ArrayRecord({"counts": Array(encode_counts(counts))}),
                               "metrics": MetricRecord({"num-examples": len(data.test_y)})}),
                   reply_to=msg)
