"""The paper's sample selection (§3): drop unlabelled scans, cap classes, split by patient.

Selection works on patients, never on single scans, so a patient's scans stay together:

1. drop scans that carry none of the requested tasks' labels;
2. give each patient one class — the worst diagnosis over their scans (malignant >
   benign > healthy), or, at a site without diagnosis labels (VinDr-Mammo in the paper),
   their densest density class;
3. cap each class at ``cap`` patients (1,000 in the paper), drawing patients at random
   with a seed and keeping every patient of a smaller class;
4. split patients 70/30 into train/test, stratified by their (diagnosis, density) class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from client.schema import TASKS

#: The paper's per-class patient cap.
PATIENT_CAP = 1000
TRAIN_FRACTION = 0.7


@dataclass(frozen=True)
class SelectionReport:
    """What selection kept and dropped, in scans and patients."""

    scans_in: int
    scans_unlabelled: int
    level: str
    patients_per_class: dict[str, int]
    patients_capped: dict[str, int] = field(default_factory=dict)
    scans_out: int = 0
    train_patients: int = 0
    test_patients: int = 0

    def summary(self) -> str:
        """One readable paragraph for the command line and the site report."""
        capped = ", ".join(f"{c}: {n} dropped" for c, n in self.patients_capped.items() if n) or "none"
        return (
            f"selection: {self.scans_in} scans in, {self.scans_unlabelled} without a label dropped; "
            f"patients per {self.level} class {self.patients_per_class}; cap removed {capped}; "
            f"{self.scans_out} scans kept, patients train/test {self.train_patients}/{self.test_patients}"
        )


def _rank(values: pd.Series, classes: tuple[str, ...]) -> pd.Series:
    """Class index (higher = worse / denser); -1 where missing."""
    return values.map({c: i for i, c in enumerate(classes)}).fillna(-1).astype(int)


def patient_classes(manifest: pd.DataFrame, level: str) -> pd.Series:
    """Each patient's class at ``level``: the highest-ranked label over their scans.

    Parameters
    ----------
    manifest : pandas.DataFrame
        Rows with ``patient_id`` and the ``level`` column.
    level : str
        ``"diagnosis"`` (malignant > benign > healthy) or ``"density"`` (D > … > A).

    Returns
    -------
    pandas.Series
        Class name (or ``None`` when the patient has no label at that level), indexed
        by patient id.
    """
    classes = TASKS[level]
    worst = _rank(manifest[level], classes).groupby(manifest["patient_id"]).max()
    names = [classes[i] if i >= 0 else None for i in worst.to_numpy()]
    return pd.Series(names, index=worst.index, dtype=object)


def selection_level(manifest: pd.DataFrame) -> str:
    """Diagnosis where the site has diagnosis labels, density otherwise (paper §3, VinDr)."""
    return "diagnosis" if manifest["diagnosis"].notna().any() else "density"


def cap_patients(classes: pd.Series, cap: int, rng: np.random.Generator) -> pd.Index:
    """Patients kept when each class holds at most ``cap`` (random draw without replacement).

    Patients without a class at this level are kept: they carry the other task's label.
    """
    kept: list[object] = []
    for _, members in classes.groupby(classes.fillna("<none>"), sort=True):
        ids = np.sort(members.index.to_numpy(dtype=object))
        if len(ids) > cap and members.notna().all():
            ids = np.sort(rng.choice(ids, size=cap, replace=False))
        kept.extend(ids.tolist())
    return pd.Index(kept)


def split_patients(
    strata: pd.Series, rng: np.random.Generator, train_fraction: float = TRAIN_FRACTION
) -> pd.Series:
    """Patient → ``"train"``/``"test"``, stratified, by largest-remainder allocation.

    Each stratum gets ``floor(n_s · f)`` or ``ceil(n_s · f)`` train patients and the site
    as a whole exactly ``round(N · f)``: the leftover places go to the strata with the
    largest remainders (ties drawn at random). Rounding each small stratum on its own
    would send every one-patient stratum to train.

    Parameters
    ----------
    strata : pandas.Series
        A stratum label per patient (index = patient id).
    rng : numpy.random.Generator
        Breaks ties and shuffles patients within each stratum.
    train_fraction : float
        Share of patients put in train.

    Returns
    -------
    pandas.Series
        Split per patient id.
    """
    groups = {key: np.sort(m.index.to_numpy(dtype=object)) for key, m in strata.groupby(strata, sort=True)}
    sizes = np.array([len(ids) for ids in groups.values()], dtype=float)
    quota = sizes * train_fraction
    n_train = np.floor(quota).astype(int)
    extra = int(np.floor(sizes.sum() * train_fraction + 0.5)) - int(n_train.sum())
    order = np.lexsort((rng.random(len(sizes)), -(quota - n_train)))
    n_train[order[:extra]] += 1
    split = pd.Series("test", index=strata.index, dtype=object)
    for ids, k in zip(groups.values(), n_train, strict=True):
        split.loc[rng.permutation(ids)[:k]] = "train"
    return split


def select_samples(
    manifest: pd.DataFrame,
    *,
    tasks: tuple[str, ...] = tuple(TASKS),
    cap: int = PATIENT_CAP,
    train_fraction: float = TRAIN_FRACTION,
    seed: int = 0,
) -> tuple[pd.DataFrame, SelectionReport]:
    """Apply the paper's selection and split to one site's manifest.

    Parameters
    ----------
    manifest : pandas.DataFrame
        One site's scans (an adapter's output); any ``split`` column is replaced.
    tasks : tuple of str
        A scan is kept when it has a label for at least one of these tasks.
    cap : int
        Maximum patients per class.
    train_fraction : float
        Share of patients in train, per stratum.
    seed : int
        Seeds the cap's draw and the split.

    Returns
    -------
    (pandas.DataFrame, SelectionReport)
        The kept scans with a ``split`` column (original order), and the counts.
    """
    rng = np.random.default_rng(seed)
    labelled = manifest[list(tasks)].notna().any(axis=1)
    rows = manifest.loc[labelled].copy()
    level = selection_level(rows) if "diagnosis" in tasks else "density"
    classes = patient_classes(rows, level)
    kept = cap_patients(classes, cap, rng)
    per_class = classes.fillna("unlabelled").value_counts().sort_index()
    after = classes.loc[kept].fillna("unlabelled").value_counts()
    rows = rows.loc[rows["patient_id"].isin(kept)]
    strata = pd.concat([patient_classes(rows, t).fillna("-") for t in tasks], axis=1).agg("/".join, axis=1)
    split = split_patients(strata, rng, train_fraction)
    rows["split"] = rows["patient_id"].map(split)
    report = SelectionReport(
        scans_in=len(manifest), scans_unlabelled=int((~labelled).sum()), level=level,
        patients_per_class={str(k): int(v) for k, v in per_class.items()},
        patients_capped={str(k): int(v - after.get(k, 0)) for k, v in per_class.items()},
        scans_out=len(rows), train_patients=int((split == "train").sum()),
        test_patients=int((split == "test").sum()),
    )
    return rows.reset_index(drop=True), report
