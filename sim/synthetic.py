r"""Calibrated synthetic ten-site feature simulator: the embedded default data.

This is a *simulator*. Its features imitate the structure the paper reports for real
foundation-model (FM) features so that every part of fedmammo can run and be tested
without hospital data; nothing it produces is evidence about a real FM.

Generative model
----------------
Manifest (depends on the seed only, so every FM profile sees the same scans). For site
:math:`s` with Table-2 class counts (``configs/sites.toml``) scaled by ``scale``:

1. Draw the per-scan labels with exactly the tabulated counts per diagnosis class
   (healthy = remainder) and per density class (the remainder has no density).
2. Sort scans by (density, diagnosis) and cut them into patients of 1–4 scans, so a
   patient's scans share their labels; the patient count is Table 2's, raised to
   ``ceil(scans / 4)`` where the table implies more than 4 scans per patient (RSNA).
3. Split patients 70/30 into train/test, stratified by their labels, with stochastic
   rounding per stratum, so no patient is in both splits.
4. Age (sites that record it) is per patient, Normal with the site's mean and sd and a
   correlation of ``-AGE_DENSITY_CORR`` with the patient's standardised density: older
   breasts are less dense, as in the paper's ref. [8].

Features (per FM profile ``f`` with dimension ``d_f``). A latent vector
:math:`h \\in \\mathbb{R}^{L}` is the sum of

* a site centre :math:`\\sigma_f\\, m_s` (:math:`m_s` a random unit vector): sites cluster (Fig. 1);
* a diagnosis effect :math:`\\lambda_f (\\sqrt{1-\rho}\\, u_y + \\sqrt{\rho}\\, v_{s,y})` with a
  prototype :math:`u_y` shared by all sites and :math:`v_{s,y}` specific to the site, so a
  probe trained on one site loses F1 on others;
* an ordinal density effect :math:`\\delta_f\\, (c - 1.5)\\, w_s`, with
  :math:`w_s \\propto \\sqrt{1-\rho}\\, w + \\sqrt{\rho}\\, w'_s` (monotone in class c = 0..3);
* small age, view and patient effects;

and the feature is :math:`x = P_f h + \\epsilon`, :math:`P_f` a random ``d_f × L`` matrix
with orthonormal columns and :math:`\\epsilon \\sim N(0, \\eta_f^2 I)`. The profiles'
:math:`(\\sigma, \\lambda, \\delta, \\eta)` are calibrated so that MammoCLIP carries the
strongest label signal and the strongest site clustering, GLoRIA/CLIP/DINOv2 less, and
MedCLIP is close to noise — the ordering of the paper's Table 3 and Fig. 1.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from client.schema import MANIFEST_COLUMNS, TASKS
from sim.sites import Site

GENERATOR_VERSION = "synthetic-1"
LATENT_DIM = 32
TRAIN_FRACTION = 0.7
AGE_DENSITY_CORR = 0.5
_VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))


@dataclass(frozen=True)
class FMProfile:
    """Signal strengths of one simulated FM (see the module docstring)."""

    name: str
    dim: int
    site_scale: float
    label_scale: float
    density_scale: float
    noise: float
    site_specific: float = 0.5
    age_scale: float = 0.3
    view_scale: float = 0.1
    patient_sd: float = 0.3


#: Feature dimensions follow the paper §3 / references.md; strengths are calibrated.
PROFILES: dict[str, FMProfile] = {
    p.name: p
    for p in (
        FMProfile("mammoclip", 2048, site_scale=3.0, label_scale=1.15, density_scale=2.3, noise=0.35),
        FMProfile("medclip", 512, site_scale=0.6, label_scale=0.35, density_scale=0.4, noise=0.6),
        FMProfile("gloria", 2048, site_scale=1.0, label_scale=0.95, density_scale=1.6, noise=0.35),
        FMProfile("clip", 512, site_scale=2.0, label_scale=0.9, density_scale=1.4, noise=0.5),
        FMProfile("dinov2", 384, site_scale=2.0, label_scale=0.95, density_scale=1.5, noise=0.5),
    )
}


def _key(*parts: object) -> list[int]:
    """A stable integer seed sequence from names and numbers (hash() is salted per run)."""
    return [zlib.crc32(str(p).encode()) for p in parts]


def scaled_counts(counts: dict[str, int], scale: float) -> dict[str, int]:
    """Scale class counts, keeping every non-empty class with at least one scan."""
    return {c: (max(1, round(n * scale)) if n > 0 else 0) for c, n in counts.items()}


def _label_array(counts: dict[str, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """Object array of length n with exactly ``counts`` per class, None for the rest."""
    labels = np.full(n, None, dtype=object)
    flat = np.concatenate([np.full(k, c, dtype=object) for c, k in counts.items()] or [labels[:0]])
    labels[: len(flat)] = flat
    return labels[rng.permutation(n)]


def _patient_sizes(n_scans: int, n_patients: int, rng: np.random.Generator) -> np.ndarray:
    """Sizes in 1..4 summing to n_scans (n_patients is clamped to what is feasible)."""
    n_patients = int(np.clip(n_patients, -(-n_scans // 4), n_scans))
    sizes = np.ones(n_patients, dtype=np.int64)
    remaining = n_scans - n_patients
    while remaining > 0:
        eligible = np.flatnonzero(sizes < 4)
        pick = rng.choice(eligible, size=min(remaining, eligible.size), replace=False)
        sizes[pick] += 1
        remaining -= pick.size
    return sizes


def _split(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Patient-level 70/30 split, stratified, with stochastic rounding per stratum."""
    is_test = np.zeros(strata.size, dtype=bool)
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        n_test = int(np.floor((1 - TRAIN_FRACTION) * members.size + rng.random()))
        is_test[members[:n_test]] = True
    return np.where(is_test, "test", "train")


def _ages(site: Site, density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-patient ages correlated negatively with density; NaN where unrecorded."""
    if not site.has_age:
        return np.full(density.size, np.nan)
    code = np.array([TASKS["density"].index(d) if d is not None else np.nan for d in density])
    z = np.zeros(code.size)
    known = np.isfinite(code)
    if known.sum() > 1 and np.std(code[known]) > 0:
        z[known] = (code[known] - code[known].mean()) / code[known].std()
    eps = rng.standard_normal(density.size)
    age = site.age_mean + site.age_sd * (-AGE_DENSITY_CORR * z + np.sqrt(1 - AGE_DENSITY_CORR**2) * eps)
    return np.clip(np.round(age), 25, 95)


def site_manifest(site: Site, scale: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Draw the manifest of one synthetic site (identical for every FM profile).

    Parameters
    ----------
    site : Site
        Its Table-2 counts drive the label and patient draws.
    scale : float
        Fraction of the tabulated counts to draw (non-empty classes keep >= 1 scan).
    seed : int
        Seed; the same (site, scale, seed) gives the same manifest.

    Returns
    -------
    pandas.DataFrame
        Columns `client.schema.MANIFEST_COLUMNS`, one row per scan.
    """
    rng = np.random.default_rng(_key(seed, site.name, scale, "manifest"))
    counts = {t: scaled_counts(site.class_counts(t), scale) for t in TASKS}
    n = max([max(1, round(site.scans * scale))] + [sum(c.values()) for c in counts.values()])
    if site.has_label("diagnosis"):  # healthy is the remainder: recompute after rounding
        counts["diagnosis"]["healthy"] = n - counts["diagnosis"]["benign"] - counts["diagnosis"]["malignant"]
    labels = {t: _label_array(counts[t], n, rng) for t in TASKS}
    order = np.lexsort([_sort_code(labels["diagnosis"]), _sort_code(labels["density"])])
    labels = {t: v[order] for t, v in labels.items()}
    sizes = _patient_sizes(n, max(1, round(site.patients * scale)), rng)
    patient = np.repeat(np.arange(sizes.size), sizes)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    strata = np.array([f"{labels['diagnosis'][i]}|{labels['density'][i]}" for i in first])
    split = _split(strata, rng)[patient]
    age = _ages(site, labels["density"][first], rng)[patient]
    views = np.concatenate([rng.permutation(4)[:k] for k in sizes])
    pid = np.array([f"{site.name}/P{p:05d}" for p in patient], dtype=object)
    frame = pd.DataFrame({
        "site": site.name,
        "patient_id": pid,
        "scan_id": [f"{p}/{_VIEWS[v][0]}_{_VIEWS[v][1]}" for p, v in zip(pid, views, strict=True)],
        "view": [_VIEWS[v][1] for v in views],
        "laterality": [_VIEWS[v][0] for v in views],
        "age": age.astype(np.float64),
        "density": labels["density"],
        "diagnosis": labels["diagnosis"],
        "split": split,
    })
    return frame.loc[:, list(MANIFEST_COLUMNS)]


def _sort_code(labels: np.ndarray) -> np.ndarray:
    """Sortable codes for an object label array (missing last)."""
    return np.array([str(v) if v is not None else "~" for v in labels])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _class_codes(values: pd.Series, task: str) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(TASKS[task])}
    return values.map(lookup).fillna(-1).to_numpy(dtype=np.int64)


def site_features(
    manifest: pd.DataFrame, site_index: int, profile: FMProfile, seed: int = 0
) -> np.ndarray:
    """Draw one site's features under ``profile`` (see the module docstring).

    Parameters
    ----------
    manifest : pandas.DataFrame
        The site's manifest from `site_manifest`.
    site_index : int
        The site's position in the site table (selects its site-specific directions).
    profile : FMProfile
        Signal strengths and dimension.
    seed : int
        Seed shared by all sites of one synthetic study.

    Returns
    -------
    numpy.ndarray
        float32 array of shape (len(manifest), profile.dim).
    """
    shared = np.random.default_rng(_key(seed, profile.name, "shared"))
    proj, _ = np.linalg.qr(shared.standard_normal((profile.dim, LATENT_DIM)))
    u_diag = _unit(shared.standard_normal((len(TASKS["diagnosis"]), LATENT_DIM)))
    w_dens, w_age, w_view = _unit(shared.standard_normal((3, LATENT_DIM)))
    local = np.random.default_rng(_key(seed, profile.name, "site", site_index))
    centre = _unit(local.standard_normal(LATENT_DIM))
    v_diag = _unit(local.standard_normal((len(TASKS["diagnosis"]), LATENT_DIM)))
    w_dens_site = _unit(local.standard_normal(LATENT_DIM))
    rho = profile.site_specific
    diag_dirs = np.sqrt(1 - rho) * u_diag + np.sqrt(rho) * v_diag
    dens_dir = _unit(np.sqrt(1 - rho) * w_dens + np.sqrt(rho) * w_dens_site)
    rng = np.random.default_rng(_key(seed, profile.name, "draws", site_index))
    n = len(manifest)
    diag = _class_codes(manifest["diagnosis"], "diagnosis")
    dens = _class_codes(manifest["density"], "density")
    age_z = np.nan_to_num((manifest["age"].to_numpy() - 55.0) / 12.0)
    view = np.where(manifest["view"].to_numpy() == "CC", 1.0, -1.0)
    _, patient = np.unique(manifest["patient_id"].to_numpy(), return_inverse=True)
    h = np.tile(profile.site_scale * centre, (n, 1))
    h += profile.label_scale * np.where((diag >= 0)[:, None], diag_dirs[np.maximum(diag, 0)], 0.0)
    h += profile.density_scale * np.where(dens >= 0, dens - 1.5, 0.0)[:, None] * dens_dir
    h += profile.age_scale * age_z[:, None] * w_age + profile.view_scale * view[:, None] * w_view
    h += profile.patient_sd * rng.standard_normal((patient.max() + 1, LATENT_DIM))[patient]
    x = h @ proj.T + profile.noise * rng.standard_normal((n, profile.dim))
    return x.astype(np.float32)


def synthesize(
    sites: tuple[Site, ...], fms: tuple[str, ...], scale: float = 1.0, seed: int = 0
) -> Iterator[tuple[Site, FMProfile, pd.DataFrame, np.ndarray]]:
    """Yield ``(site, profile, manifest, features)`` for every site × FM profile.

    Parameters
    ----------
    sites : tuple of Site
        The site table.
    fms : tuple of str
        Profile names, keys of `PROFILES`.
    scale : float
        Fraction of Table 2's counts.
    seed : int
        Seed of the whole synthetic study.

    Yields
    ------
    tuple
        One (site, profile, manifest, features) per pair, sites in table order.
    """
    unknown = [f for f in fms if f not in PROFILES]
    if unknown:
        raise KeyError(f"unknown FM profile {unknown[0]!r}; expected one of {sorted(PROFILES)}")
    for index, site in enumerate(sites):
        manifest = site_manifest(site, scale, seed)
        for fm in fms:
            yield site, PROFILES[fm], manifest, site_features(manifest, index, PROFILES[fm], seed)
