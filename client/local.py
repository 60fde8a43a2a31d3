"""A site's local rows for one task: what a hospital trains and evaluates on."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from client.evaluation import age_band
from client.feature_store import SiteFeatures
from client.schema import AGE_BANDS, encode_labels
from strategies.core import ArrayData

log = logging.getLogger("fedmammo")


@dataclass(frozen=True)
class SiteTask:
    """One site's rows for one task: its training data and its test split."""

    name: str
    train: ArrayData
    test_x: np.ndarray
    test_y: np.ndarray
    test_groups: dict[str, np.ndarray | None]


def site_task(entry: SiteFeatures, task: str, domain: int) -> SiteTask | None:
    """Select a site's labelled rows for ``task``; None (and a log line) if it has none.

    Parameters
    ----------
    entry : SiteFeatures
        The site's store entry.
    task : str
        Task name.
    domain : int
        Index of this site among the task's sites (its domain label).

    Returns
    -------
    SiteTask or None
        None when the site has no labelled training or test scan for the task.
    """
    m = entry.manifest
    y = encode_labels(m[task].reset_index(drop=True), task)
    train = (y >= 0) & (m["split"].to_numpy() == "train")
    test = (y >= 0) & (m["split"].to_numpy() == "test")
    site = entry.provenance.site
    if not train.any() or not test.any():
        log.info("skipping site %s for task %s: %d labelled train / %d test scans",
                 site, task, int(train.sum()), int(test.sum()))
        return None
    n = int(train.sum())
    bands = age_band(m["age"].to_numpy(dtype=np.float64))
    attrs = {
        "density": encode_labels(m["density"].reset_index(drop=True), "density")[train],
        "age_band": np.array([AGE_BANDS.index(b) if b is not None else -1 for b in bands[train]]),
    }
    data = ArrayData(entry.features[train], y[train], np.full(n, domain),
                     m["patient_id"].to_numpy()[train], attrs)
    groups = {
        "density": m["density"].to_numpy(dtype=object)[test] if task != "density" else None,
        "age_band": bands[test],
    }
    return SiteTask(site, data, entry.features[test], y[test], groups)
