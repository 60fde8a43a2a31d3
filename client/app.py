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
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.overrides import TorchFunctionMode

from client.evaluation import site_counts
from client.extract import node_store
from client.feature_store import read_entry
from client.local import SiteTask, site_task
from client.payload import encode_counts, load_record, numpy_record
from client.privacy import clip_if_requested
from client.prototype import clonable, clone
from client.records import record_dict
from client.schema import SENSITIVE_SIZES, task_classes
from sim.config import build
from strategies.allocator import retain_freed_memory
from strategies.base import Method, MethodConfig, TaskSpec, get_method, seed_torch, weighted_cross_entropy
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


class _NoRandomInit(TorchFunctionMode):
    """Skips modules' random initialisation while a model whose weights will be loaded is built.

    Every message builds a fresh model and then loads the received arrays over all of
    its parameters and buffers (strictly), so drawing initial weights first is wasted:
    about half of a model's build time on the per-message path.
    """

    SKIP = frozenset({torch.nn.init.kaiming_uniform_, torch.nn.init.kaiming_normal_,
                      torch.nn.init.uniform_, torch.nn.init.normal_, torch.nn.init.trunc_normal_,
                      torch.Tensor.uniform_, torch.Tensor.normal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204, D105
        if func in self.SKIP:
            return args[0] if args else next(iter(kwargs.values()))
        return func(*args, **(kwargs or {}))


Weights = ArrayRecord | Mapping[str, torch.Tensor]


def _load(model: Method, weights: Weights) -> None:
    if isinstance(weights, ArrayRecord):
        load_record(model, weights)
    else:
        model.load_state_dict(weights)


def _model_key(cfg: ConfigRecord, in_dim: int) -> tuple[str, str, str, int, tuple[float, ...], int]:
    """What a model's construction depends on: method, its config, task, domains, class weights, width."""
    return (str(cfg["method"]), str(cfg.get("method-config", "{}")), str(cfg["task"]),
            int(cfg["n-domains"]), tuple(float(w) for w in cfg["class-weights"]), in_dim)


@lru_cache(maxsize=64)
def _recipe(method: str, method_config: str, task: str, n_domains: int, class_w: tuple[float, ...],
            in_dim: int) -> tuple[type[Method], MethodConfig, TaskSpec]:
    """The method's class, config and task spec for a `_model_key` (both immutable, so shared)."""
    cls = get_method(method)
    config = build(cls.config_cls, json.loads(method_config), "method-config")
    n_groups = n_domains if config.sensitive == "site" else SENSITIVE_SIZES[config.sensitive]
    return cls, config, TaskSpec(in_dim, len(task_classes(task)), n_domains, class_w, n_groups)


@lru_cache(maxsize=16)
def _prototype(*key: object) -> Method | None:
    """A never-used model of a `_model_key` to `clone`, or None if it is not `clonable`."""
    cls, config, spec = _recipe(*key)
    with _NoRandomInit():
        model = cls(spec, config)
    return model if clonable(model) else None


def build_model(cfg: ConfigRecord, in_dim: int, weights: Weights | None = None) -> Method:
    """The method's model as the server configured it (global class weights, domains).

    With ``weights`` (a full state dict, as tensors or as the received ``ArrayRecord``)
    the model is made without random initialisation — a `client.prototype.clone` of its
    configuration's prototype where that equals construction — and those weights are
    loaded, strictly: every parameter and buffer must be given.
    """
    key = _model_key(cfg, in_dim)
    cls, config, spec = _recipe(*key)
    if weights is None:
        return cls(spec, config)
    prototype = _prototype(*key)
    if prototype is None:
        with _NoRandomInit():
            model = cls(spec, config)
    else:
        model = clone(prototype)
    _load(model, weights)
    return model


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


#: Inference-only models by configuration, with the record bytes they hold (`inference_model`).
_INFERENCE: OrderedDict[tuple[object, ...], tuple[Method, tuple[object, ...] | None]] = OrderedDict()


def _source(weights: Weights) -> tuple[object, ...] | None:
    """The names and (immutable) bytes objects of a received record; None for tensors."""
    if not isinstance(weights, ArrayRecord):
        return None
    return tuple(x for name, array in weights.items() for x in (name, array.data))


def inference_model(cfg: ConfigRecord, in_dim: int, weights: Weights) -> Method:
    """A model of ``cfg`` holding ``weights``, for inference only (never trained or changed).

    A model that only ever predicts holds nothing beyond its parameters and buffers: what
    its constructor set from the configuration, and the weights loaded over it. So one
    model per configuration (a few kept) is reloaded for each evaluation instead of being
    rebuilt, which is equal to building it anew and saves a model build per message.
    When the record's arrays are the very bytes objects the model was last loaded from
    (every site of an in-process simulation evaluates the same global record), it holds
    them already and is not reloaded.
    """
    key, source = _model_key(cfg, in_dim), _source(weights)
    model, held = _INFERENCE.pop(key, (None, None))
    if model is None:
        model = build_model(cfg, in_dim, weights)
    elif source is None or held is None or len(source) != len(held) or any(
            a is not b for a, b in zip(source, held, strict=True)):
        _load(model, weights)
    _INFERENCE[key] = (model, source)
    while len(_INFERENCE) > 4:
        _INFERENCE.popitem(last=False)
    return model


def _received(
    msg: Message, context: Context, train: bool = True,
) -> tuple[ConfigRecord, str, SiteTask, Method]:
    """The message's config, this node's site and rows, and the global model it was sent.

    The model is a fresh one when it will ``train``, else a reloaded `inference_model`.
    """
    cfg = msg.content["config"]
    site, data = _data(context, cfg)
    _maybe_fail(cfg, site)
    if data is None:
        raise ValueError(f"site {site} has no labelled rows for task {cfg['task']}")
    make = build_model if train else inference_model
    return cfg, site, data, make(cfg, data.train.x.shape[1], msg.content["arrays"])


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
    retain_freed_memory()  # once per process: Ray actors and deployed nodes train here
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
    return Message(record_dict({"arrays": numpy_record(model.state_dict()),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Confusion counts of the global model on the local test split, per subgroup."""
    cfg, site, data, model = _received(msg, context, train=False)
    n_classes = len(task_classes(str(cfg["task"])))
    counts = site_counts(site, data.test_y, predict(model, data.test_x), n_classes, data.test_groups)
    return Message(record_dict({"arrays": numpy_record({"counts": encode_counts(counts)}),
                               "metrics": MetricRecord({"num-examples": len(data.test_y)})}),
                   reply_to=msg)
