"""``fedmammo prepare``: a site's release on disk → selected manifest + preprocessed images.

The output folder (a *prepared site folder*) holds::

    manifest.parquet    the manifest (client.schema columns) + image_path + cache_file
    images/*.png        8-bit 1520×912 Mammo-CLIP crops, one per scan
    quarantine.parquet  scans whose image failed, with the reason
    report.json         what the adapter mapped/dropped, what selection kept, image counts

It is built in a hidden sibling folder and renamed into place only when complete, so a
failed run leaves the output folder as it was; a rerun resumes from the images already
cached in the hidden folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from client.atomic import replace_dir, write_parquet, write_text
from client.imaging import cache_images
from client.schema import MANIFEST_COLUMNS, validate_manifest
from client.selection import PATIENT_CAP, SelectionReport, select_samples
from client.sites.base import AdapterError, AdapterResult, get_adapter

MANIFEST, IMAGES, QUARANTINE, REPORT = "manifest.parquet", "images", "quarantine.parquet", "report.json"


@dataclass(frozen=True)
class Prepared:
    """A prepared site: its manifest (with ``cache_file``), quarantine and reports."""

    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    mapping: AdapterResult
    selection: SelectionReport

    def summary(self) -> str:
        """The mapping report, the selection, and the image outcome, for a person."""
        cached = int(self.manifest["cache_file"].notna().sum())
        lines = [self.mapping.report.summary(self.mapping.manifest), self.selection.summary()]
        lines.append(f"images: {cached} preprocessed, {len(self.quarantine)} quarantined")
        lines += [f"  quarantined {n}: {why}" for why, n in self.quarantine["reason"].value_counts().items()]
        return "\n".join(lines)


def map_and_select(site: str, root: Path, *, mapping: Path | None = None, seed: int = 0,
                   cap: int = PATIENT_CAP) -> tuple[AdapterResult, pd.DataFrame, SelectionReport]:
    """Run the site's adapter on ``root`` and the paper's selection on its output.

    Raises
    ------
    AdapterError
        If the release cannot be read, or no scan survives mapping and selection.
    """
    if not Path(root).is_dir():
        raise AdapterError(f"{root}: not a folder; expected the {site} release as downloaded")
    options = {"mapping": mapping} if mapping is not None else {}
    mapped = get_adapter(site, **options).read(Path(root))
    if mapped.manifest.empty:
        raise AdapterError(f"{root}: the {site} adapter mapped no scans\n{mapped.report.summary()}")
    selected, report = select_samples(mapped.manifest, cap=cap, seed=seed)
    if selected.empty:
        raise AdapterError(f"{root}: no {site} scan carries a diagnosis or density label")
    return mapped, selected, report


def _partial(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def prepare_site(site: str, root: Path, out: Path, *, mapping: Path | None = None, seed: int = 0,
                 workers: int | None = None, progress: bool = True, cap: int = PATIENT_CAP) -> Prepared:
    """Map, select, preprocess and write one prepared site folder.

    Parameters
    ----------
    site : str
        Adapter name (``CBIS-DDSM``, …, or ``generic`` with ``mapping``).
    root : Path
        The release as it sits on disk.
    out : Path
        The prepared site folder to write (replaced when complete).
    mapping : Path, optional
        TOML column/value mapping for the generic adapter.
    seed : int
        Seeds the class cap and the split.
    workers : int, optional
        Image processes (default: all cores).
    progress : bool
        Show a progress bar.
    cap : int
        Patients per class.

    Returns
    -------
    Prepared
        What was written.
    """
    mapped, selected, report = map_and_select(site, root, mapping=mapping, seed=seed, cap=cap)
    partial = _partial(Path(out))
    (partial / IMAGES).mkdir(parents=True, exist_ok=True)
    items = list(zip(selected["scan_id"], selected["image_path"], strict=True))
    status = cache_images(items, partial / IMAGES, workers=workers, progress=progress)
    by_scan = status.set_index("scan_id")
    selected["cache_file"] = selected["scan_id"].map(by_scan["cache_file"]).astype(object)
    selected = selected.where(selected.notna(), None)
    failed = ~status["status"].isin(["ok", "cached"])
    quarantine = status.loc[failed, ["scan_id", "image_path", "status", "reason"]]
    validate_manifest(selected, f"{site} manifest")
    prepared = Prepared(selected.loc[:, [*MANIFEST_COLUMNS, "image_path", "cache_file"]],
                        quarantine.reset_index(drop=True), mapped, report)
    _write(partial, prepared)
    replace_dir(partial, Path(out))
    return prepared


def _write(folder: Path, prepared: Prepared) -> None:
    write_parquet(folder / MANIFEST, prepared.manifest)
    write_parquet(folder / QUARANTINE, prepared.quarantine)
    rep = prepared.mapping.report
    report = {
        "site": rep.site, "rows_read": rep.rows_read, "mapped": rep.mapped,
        "dropped": dict(rep.dropped), "notes": rep.notes, "selection": asdict(prepared.selection),
        "images": {"preprocessed": int(prepared.manifest["cache_file"].notna().sum()),
                   "quarantined": dict(prepared.quarantine["reason"].value_counts())},
    }
    write_text(folder / REPORT, json.dumps(report, indent=2, default=int))


def read_prepared(folder: Path) -> pd.DataFrame:
    """Load a prepared site folder's manifest, checking it is complete.

    Raises
    ------
    AdapterError
        Naming the file when the folder is not a complete prepared site.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise AdapterError(f"{path}: missing; expected a folder written by `fedmammo prepare`")
    manifest = pd.read_parquet(path)
    validate_manifest(manifest, str(path))
    return manifest
