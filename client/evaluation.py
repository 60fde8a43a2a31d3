"""Local evaluation at a hospital: confusion counts per subgroup.

A site turns its test predictions into aggregate confusion matrices, one per
(group kind, group) pair. Only these counts leave the site; their size depends on
the number of classes and groups, never on the number of patients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

GROUP_KINDS: tuple[str, ...] = ("site", "density", "age_band")

_FRAME_COLUMNS = ("site", "group_kind", "group", "true", "pred", "count")


def age_band(age: np.ndarray) -> np.ndarray:
    """Map ages in years to the paper's age bands.

    Parameters
    ----------
    age : np.ndarray
        Ages in years; NaN marks an unknown age.

    Returns
    -------
    np.ndarray
        Object array of ``"<40"``, ``"40-70"`` (both ends inclusive), ``">70"``,
        or ``None`` where the age is NaN.

    """
    years = np.asarray(age, dtype=float)
    bands = np.full(years.shape, None, dtype=object)
    # NaN compares False everywhere, so unknown ages stay None.
    bands[years < 40] = "<40"
    bands[(years >= 40) & (years <= 70)] = "40-70"
    bands[years > 70] = ">70"
    return bands


def _as_labels(name: str, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Validate class labels and return them as a 1-D int64 array."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == object:
        # Labels read from an object column (e.g. pandas) are still fine if numeric.
        try:
            arr = arr.astype(float)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must hold integer class labels") from None
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        numeric = np.issubdtype(arr.dtype, np.number)
        bad = ~np.isfinite(arr) | (arr != np.round(arr)) if numeric else np.ones(arr.shape, bool)
        if bad.any():
            raise ValueError(f"{name} must hold integer class labels, got {arr[bad][0]!r}")
    labels = arr.astype(np.int64)
    out_of_range = (labels < 0) | (labels >= n_classes)
    if out_of_range.any():
        raise ValueError(
            f"{name} holds label {labels[out_of_range][0]}, expected one of 0..{n_classes - 1}"
        )
    return labels


def _check_n_classes(n_classes: int) -> None:
    if int(n_classes) != n_classes or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Count (true, predicted) pairs.

    Parameters
    ----------
    y_true, y_pred : np.ndarray
        Integer class labels in ``[0, n_classes)``, same length.
    n_classes : int
        Number of classes ``C``.

    Returns
    -------
    np.ndarray
        int64 array of shape ``(C, C)``; rows are true classes, columns predictions.

    Raises
    ------
    ValueError
        If the lengths differ or a label is outside ``[0, C)`` (the message names it).

    """
    cells = _cell_index(y_true, y_pred, n_classes)
    flat = np.bincount(cells, minlength=n_classes * n_classes)
    return flat.astype(np.int64).reshape(n_classes, n_classes)


def _cell_index(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Validate labels and return each sample's flat cell index ``true * C + pred``."""
    _check_n_classes(n_classes)
    true = _as_labels("y_true", y_true, n_classes)
    pred = _as_labels("y_pred", y_pred, n_classes)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels but y_pred has {pred.size}")
    return true * n_classes + pred


@dataclass
class SiteCounts:
    """Confusion counts of one site, one matrix per (group kind, group).

    Attributes
    ----------
    site : str
        Site name; ``counts[("site", site)]`` covers all its test samples.
    n_classes : int
        Number of classes ``C``.
    counts : dict[tuple[str, str], np.ndarray]
        ``(group_kind, group) -> (C, C)`` int64 matrix (rows true, columns predicted).

    """

    site: str
    n_classes: int
    counts: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_n_classes(self.n_classes)
        shape = (self.n_classes, self.n_classes)
        for key, cm in self.counts.items():
            arr = np.asarray(cm)
            if arr.shape != shape:
                raise ValueError(f"counts[{key!r}] has shape {arr.shape}, expected {shape}")
            if (arr < 0).any():
                raise ValueError(f"counts[{key!r}] has negative counts")
            self.counts[key] = arr.astype(np.int64)

    def total(self) -> np.ndarray:
        """Return the site's overall matrix, ``counts[("site", site)]``."""
        key = ("site", self.site)
        if key not in self.counts:
            raise KeyError(f"SiteCounts for {self.site!r} lacks its total matrix {key!r}")
        return self.counts[key]

    def to_frame(self) -> pd.DataFrame:
        """Return a tidy frame with columns site, group_kind, group, true, pred, count.

        Every cell is written, zeros included, so that :meth:`from_frame` restores
        the exact matrices.
        """
        c = self.n_classes
        true, pred = (idx.ravel() for idx in np.indices((c, c)))
        parts = [
            pd.DataFrame(
                {
                    "site": self.site,
                    "group_kind": kind,
                    "group": group,
                    "true": true,
                    "pred": pred,
                    "count": cm.ravel(),
                }
            )
            for (kind, group), cm in self.counts.items()
        ]
        if not parts:
            return pd.DataFrame({col: pd.Series(dtype=object) for col in _FRAME_COLUMNS})
        return pd.concat(parts, ignore_index=True)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, n_classes: int) -> SiteCounts:
        """Rebuild counts from :meth:`to_frame` output.

        Parameters
        ----------
        df : pd.DataFrame
            Tidy counts of exactly one site.
        n_classes : int
            Number of classes ``C``.

        Returns
        -------
        SiteCounts
            Cells absent from ``df`` are zero.

        Raises
        ------
        ValueError
            On missing columns, zero or several sites, out-of-range class indices or
            duplicate cells.

        """
        missing = [col for col in _FRAME_COLUMNS if col not in df.columns]
        if missing:
            raise ValueError(f"counts frame lacks columns {missing}")
        sites = pd.unique(df["site"])
        if len(sites) != 1:
            raise ValueError(f"counts frame must hold exactly one site, got {list(sites)}")
        if df.duplicated(["group_kind", "group", "true", "pred"]).any():
            raise ValueError("counts frame has duplicate (group_kind, group, true, pred) cells")
        true = _as_labels("true", df["true"].to_numpy(), n_classes)
        pred = _as_labels("pred", df["pred"].to_numpy(), n_classes)
        counts: dict[tuple[str, str], np.ndarray] = {}
        for (kind, group), idx in df.groupby(["group_kind", "group"], sort=False).indices.items():
            cm = np.zeros((n_classes, n_classes), dtype=np.int64)
            cm[true[idx], pred[idx]] = df["count"].to_numpy()[idx]
            counts[(str(kind), str(group))] = cm
        return cls(site=str(sites[0]), n_classes=n_classes, counts=counts)


def _group_keys(kind: str, values: np.ndarray | None, n: int) -> np.ndarray | None:
    """Return group labels as str with missing entries as None; None if kind absent."""
    if values is None:
        return None
    labels = np.asarray(values, dtype=object)
    if labels.ndim != 1 or labels.size != n:
        raise ValueError(
            f"group kind {kind!r} has {labels.size} values but the site has {n} samples"
        )
    missing = np.asarray(pd.isna(labels), dtype=bool) | (labels == "")
    keys = np.full(n, None, dtype=object)
    keys[~missing] = [_group_name(v) for v in labels[~missing]]
    return keys


def _group_name(value: object) -> str:
    # A label column with NaNs is read as float; "2.0" must still pool with "2" across sites.
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def site_counts(
    site: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    groups: Mapping[str, np.ndarray | None],
) -> SiteCounts:
    """Compute a site's confusion counts overall and per subgroup.

    Parameters
    ----------
    site : str
        Site name.
    y_true, y_pred : np.ndarray
        Integer labels in ``[0, n_classes)``.
    n_classes : int
        Number of classes ``C``.
    groups : Mapping[str, np.ndarray | None]
        Group kind (one of ``GROUP_KINDS`` other than ``"site"``) to per-sample group
        labels. ``None`` means the site does not record that attribute, so the kind
        is skipped. Missing entries (None, NaN, ``""``) are left out of every group.
        Group labels are stored as ``str`` (integral floats as ints: 2.0 -> "2").

    Returns
    -------
    SiteCounts
        ``("site", site)`` over all samples plus one matrix per observed group.

    """
    cells = _cell_index(y_true, y_pred, n_classes)
    n_cells = n_classes * n_classes
    counts = {("site", site): np.bincount(cells, minlength=n_cells).reshape(n_classes, -1)}
    for kind, values in groups.items():
        if kind not in GROUP_KINDS or kind == "site":
            raise ValueError(f"unknown group kind {kind!r}, expected one of {GROUP_KINDS[1:]}")
        keys = _group_keys(kind, values, cells.size)
        if keys is None:
            continue
        observed = keys != None  # noqa: E711 - elementwise comparison on an object array
        names, index = np.unique(keys[observed].astype(str), return_inverse=True)
        # One bincount over (group, cell) instead of a Python loop over groups.
        flat = np.bincount(index * n_cells + cells[observed], minlength=names.size * n_cells)
        flat = flat.reshape(names.size, n_classes, n_classes)
        for name, group_cm in zip(names, flat, strict=True):
            counts[(kind, str(name))] = group_cm.astype(np.int64)
    return SiteCounts(site=site, n_classes=n_classes, counts=counts)
