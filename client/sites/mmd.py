"""MMD, Mammogram Mastery (Mendeley 10.17632/fvjhtskg93.1): labelled folders of JPGs, no metadata.

Layout: ``.../Breast Cancer Dataset/{Original Dataset, Augmented Dataset}/{Cancer, Non-Cancer}/*.jpg``.
Only the original images are used: the augmented copies of one image would land on both
sides of a split. Cancer → malignant, Non-Cancer → healthy (benign cannot be told apart).
No age, density, view or laterality exist, and no patient ids: each image is its own patient.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from client.sites.base import (
    AdapterError,
    AdapterResult,
    MappingReport,
    SiteAdapter,
    finish,
    register_adapter,
)
from client.sites.tables import find_in

ORIGINAL = "Original Dataset"
AUGMENTED = "Augmented Dataset"
LABELS = {"Cancer": "malignant", "Non-Cancer": "healthy"}
SUFFIXES = (".jpg", ".jpeg", ".png")
AUGMENTED_REASON = "augmented copy (would leak across the split)"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def _label_folders(original: Path) -> dict[Path, str]:
    """Each class folder with its diagnosis; a folder of another name is an error."""
    folders = sorted(p for p in original.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if p.name not in LABELS]
    if unknown or not folders:
        raise AdapterError(
            f"{original}: class folder {unknown[0] if unknown else '(none)'!r}; expected {sorted(LABELS)}"
        )
    return {p: LABELS[p.name] for p in folders}


@register_adapter
class MmdAdapter(SiteAdapter):
    """Mammogram Mastery (root: any folder above ``Original Dataset``)."""

    name = "MMD"

    def read(self, root: Path) -> AdapterResult:
        """List the original images of each class folder; count the augmented ones as dropped."""
        original = find_in(Path(root), ORIGINAL, is_dir=True)
        augmented = original.parent / AUGMENTED
        n_augmented = len(_images(augmented)) if augmented.is_dir() else 0
        rows = [
            {"scan_id": f"{folder.name}/{path.stem}", "patient_id": path.stem, "diagnosis": label,
             "image_path": str(path)}
            for folder, label in _label_folders(original).items()
            for path in _images(folder)
        ]
        report = MappingReport(site=self.name, rows_read=len(rows) + n_augmented)
        report.drop(AUGMENTED_REASON, n_augmented)
        out = pd.DataFrame(rows, columns=["scan_id", "patient_id", "diagnosis", "image_path"])
        out = out.assign(site=self.name, view=None, laterality=None, density=None, age=float("nan"))
        report.notes.append("no patient ids in MMD: patient_id = image file stem (one patient per image)")
        report.notes.append("Non-Cancer → healthy: MMD does not tell benign from healthy")
        return finish(out, report)
