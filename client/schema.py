"""The common manifest schema every site adapter, store and probe agrees on.

A manifest has one row per scan. Labels are strings in the manifest (readable in Parquet)
and become integer class indices only inside training and evaluation.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

#: Class names of each classification task, in class-index order (paper §2).
TASKS: Final[dict[str, tuple[str, ...]]] = {
    "diagnosis": ("healthy", "benign", "malignant"),
    "density": ("A", "B", "C", "D"),
}

#: Manifest columns in their canonical order.
MANIFEST_COLUMNS: Final[tuple[str, ...]] = (
    "site", "patient_id", "scan_id", "view", "laterality", "age",
    "density", "diagnosis", "split",
)

#: Age bands of the fairness analysis (paper §3.4), in code order.
AGE_BANDS: Final[tuple[str, ...]] = ("<40", "40-70", ">70")

#: Sensitive attributes other than the site, with their number of subgroups.
SENSITIVE_SIZES: Final[dict[str, int]] = {"density": len(TASKS["density"]), "age_band": len(AGE_BANDS)}

SPLITS: Final[tuple[str, ...]] = ("train", "test")


def task_classes(task: str) -> tuple[str, ...]:
    """Return the class names of ``task``.

    Parameters
    ----------
    task : str
        ``"diagnosis"`` or ``"density"``.

    Returns
    -------
    tuple of str
        Class names in index order.

    Raises
    ------
    KeyError
        If the task is unknown, naming the known tasks.
    """
    try:
        return TASKS[task]
    except KeyError:
        raise KeyError(f"unknown task {task!r}; expected one of {sorted(TASKS)}") from None


def encode_labels(values: pd.Series, task: str) -> np.ndarray:
    """Map a manifest label column to class indices, ``-1`` where the label is missing.

    Parameters
    ----------
    values : pandas.Series
        The ``density`` or ``diagnosis`` column.
    task : str
        Which task's class names to use.

    Returns
    -------
    numpy.ndarray
        int64 class indices; ``-1`` marks a missing label.

    Raises
    ------
    ValueError
        If a value is neither missing nor one of the task's classes.
    """
    classes = task_classes(task)
    lookup = {name: i for i, name in enumerate(classes)}
    codes = values.map(lookup)
    bad = values.notna() & codes.isna()
    if bad.any():
        first = values[bad].iloc[0]
        raise ValueError(
            f"column {task!r} holds {first!r} (row {values[bad].index[0]}); "
            f"expected one of {list(classes)} or missing"
        )
    return codes.fillna(-1).to_numpy(dtype=np.int64)


def validate_manifest(df: pd.DataFrame, source: str) -> None:
    """Check that ``df`` has every manifest column and valid values.

    Parameters
    ----------
    df : pandas.DataFrame
        A manifest.
    source : str
        File the manifest came from, named in errors.

    Raises
    ------
    ValueError
        Naming the file and the first problem found.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: manifest lacks columns {missing}; expected {MANIFEST_COLUMNS}")
    bad_split = ~df["split"].isin(SPLITS)
    if bad_split.any():
        row = int(np.flatnonzero(bad_split.to_numpy())[0])
        raise ValueError(f"{source}: row {row} has split {df['split'].iloc[row]!r}; expected {SPLITS}")
    for task in TASKS:
        try:
            encode_labels(df[task].reset_index(drop=True), task)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
