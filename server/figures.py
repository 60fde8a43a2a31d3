"""The report's figures: t-SNE of FM features, AOD heatmaps, federated training curves.

`tsne_sample` and `tsne_embedding` compute Fig. 1's projection; the ``*_figure``
functions take tidied frames and return a matplotlib `Figure`; `save_png` writes one
atomically. Figures use the object-oriented API (no ``pyplot``), so nothing depends on a
display, a global backend or pyplot's figure registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from client.atomic import atomic_write
from client.feature_store import list_entries, read_entry

DPI = 160
#: Paul Tol's "muted" scheme (distinguishable under the common colour-vision
#: deficiencies) plus black: ten sites need ten colours, and markers back them up in print.
SITE_COLOURS = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933",
                "#DDCC77", "#CC6677", "#882255", "#AA4499", "#000000")
SITE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
#: Density is ordinal, so a perceptually ordered (viridis) ramp, not a qualitative set.
DENSITY_COLOURS = {"A": "#440154", "B": "#31688E", "C": "#35B779", "D": "#C8B400"}
UNKNOWN_COLOUR = "#BBBBBB"

Style = tuple[str, str]


def site_styles(sites: Sequence[str]) -> dict[str, Style]:
    """A fixed (colour, marker) per site, so a site looks the same in every figure."""
    names = sorted(set(sites))
    return {s: (SITE_COLOURS[i % len(SITE_COLOURS)], SITE_MARKERS[i % len(SITE_MARKERS)])
            for i, s in enumerate(names)}


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at `DPI`, atomically (temporary file, then rename)."""
    # bbox_inches="tight" grows the canvas to fit outside legends instead of cutting them.
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI, bbox_inches="tight"))


def tsne_sample(store: Path, fm: str, per_site: int = 150, seed: int = 0
                ) -> tuple[np.ndarray, pd.DataFrame]:
    """Features and manifest rows of ≤ ``per_site`` scans per site of one FM (seeded)."""
    rng = np.random.default_rng(seed)
    feats, metas = [], []
    for site in list_entries(store).get(fm, []):
        entry = read_entry(store, fm, site)
        # Capping each site keeps big sites from swamping the map and bounds the t-SNE cost.
        idx = np.sort(rng.choice(len(entry.manifest), min(per_site, len(entry.manifest)), replace=False))
        feats.append(entry.features[idx])
        metas.append(entry.manifest.iloc[idx])
    return np.concatenate(feats), pd.concat(metas, ignore_index=True)


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (PCA init, fixed seed) after PCA to ≤ 50 dimensions.

    The PCA step drops noise dimensions and makes t-SNE's distance computations much
    cheaper on 2048-d features; perplexity shrinks for tiny samples, where 30 is not allowed.
    """
    x = np.asarray(features, dtype=np.float64)
    x = PCA(min(50, *x.shape), random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    return TSNE(2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)


def _density_scatter(ax: Axes, emb: np.ndarray, density: pd.Series) -> None:
    labels = density.astype(object).where(density.notna(), None).to_numpy()
    unknown = np.array([d not in DENSITY_COLOURS for d in labels])
    # Unknown density goes underneath, so it never hides the labelled scans.
    ax.scatter(emb[unknown, 0], emb[unknown, 1], s=8, c=UNKNOWN_COLOUR, marker="x", linewidths=0.6,
               label=f"unknown (n={unknown.sum()})")
    for d, colour in DENSITY_COLOURS.items():
        sel = labels == d
        ax.scatter(emb[sel, 0], emb[sel, 1], s=14, c=colour, alpha=0.8, linewidths=0,
                   label=f"{d} (n={sel.sum()})")


def tsne_figure(emb: np.ndarray, meta: pd.DataFrame, fm: str, styles: Mapping[str, Style]) -> Figure:
    """Fig. 1 of the paper for one FM: the same 2-D embedding coloured by site and by density.

    Parameters
    ----------
    emb : numpy.ndarray
        (n, 2) t-SNE coordinates.
    meta : pandas.DataFrame
        Manifest rows of the same scans (``site``, ``density``).
    fm : str
        FM name, for the title.
    styles : mapping of str to (colour, marker)
        From `site_styles`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(11, 5.2), layout="constrained")
    by_site, by_density = fig.subplots(1, 2, sharex=True, sharey=True)
    for site in sorted(meta["site"].unique()):
        sel = (meta["site"] == site).to_numpy()
        colour, marker = styles[site]
        by_site.scatter(emb[sel, 0], emb[sel, 1], s=14, c=colour, marker=marker, alpha=0.75,
                        linewidths=0, label=f"{site} (n={sel.sum()})")
    _density_scatter(by_density, emb, meta["density"])
    for ax, title, legend_title in ((by_site, "(A) coloured by site", "site"),
                                    (by_density, "(B) coloured by breast density", "density (BI-RADS)")):
        ax.set_title(title)
        ax.set_xlabel("t-SNE 1 (arbitrary units)")
        ax.legend(title=legend_title, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
                  markerscale=1.4, frameon=False)
    by_site.set_ylabel("t-SNE 2 (arbitrary units)")
    fig.suptitle(f"t-SNE of {fm} features ({len(meta)} scans, stratified by site)")
    return fig


def symmetric_limit(mats: Sequence[pd.DataFrame]) -> float:
    """Colour limit for AOD heatmaps: max |value| rounded up to 0.1 (at least 0.1)."""
    vals = np.concatenate([m.to_numpy(float).ravel() for m in mats]) if mats else np.array([])
    vals = np.abs(vals[np.isfinite(vals)])
    top = float(vals.max()) if vals.size else 0.0
    return max(0.1, float(np.ceil(top * 10 - 1e-9) / 10))


def _heatmap(ax: Axes, mat: pd.DataFrame, norm: TwoSlopeNorm, cmap: Colormap) -> AxesImage:
    """One annotated heatmap; NaN cells (no such group/class pair) are grey with a dash."""
    im = ax.imshow(np.ma.masked_invalid(mat.to_numpy(float)), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns])
    ax.set_yticks(range(mat.shape[0]), [str(r) for r in mat.index])
    for (i, j), v in np.ndenumerate(mat.to_numpy(float)):
        # White text on the saturated ends of the ramp, black elsewhere, for contrast;
        # +0.00 rather than -0.00 for values that round to zero.
        dark = np.isfinite(v) and abs(v) > 0.6 * norm.vmax
        text = "–" if not np.isfinite(v) else f"{v if abs(v) >= 0.005 else 0.0:+.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color="white" if dark else "black")
    return im


def _aod_axes(fig: Figure, n: int, rows: tuple[int, int], ncols: int) -> list[tuple[Axes, Axes]]:
    """(site axes, age-band axes) per panel, wrapped into blocks of ``ncols`` columns."""
    blocks = -(-n // ncols)
    axes = fig.subplots(2 * blocks, ncols, squeeze=False,
                        gridspec_kw={"height_ratios": [max(rows[0], 1), max(rows[1], 1)] * blocks})
    for k in range(n, blocks * ncols):  # empty slots of the last block
        axes[-2, k % ncols].set_visible(False)
        axes[-1, k % ncols].set_visible(False)
    return [(axes[2 * (k // ncols), k % ncols], axes[2 * (k // ncols) + 1, k % ncols]) for k in range(n)]


def _draw_aod(axes: list[tuple[Axes, Axes]], panels: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]],
              norm: TwoSlopeNorm, cols: int, class_label: str) -> AxesImage:
    # RdBu is a diverging map readable under red-green deficiencies (blue vs red-orange).
    cmap = colormaps["RdBu_r"].with_extremes(bad="#E0E0E0")
    for k, ((name, (by_site, by_age)), (top, bottom)) in enumerate(zip(panels.items(), axes, strict=True)):
        im = _heatmap(top, by_site, norm, cmap)
        _heatmap(bottom, by_age, norm, cmap)
        top.set_title(name, fontsize=10)
        bottom.set_xlabel(class_label)
        if k % cols:  # only the first column names the rows
            top.tick_params(labelleft=False)
            bottom.tick_params(labelleft=False)
        else:
            top.set_ylabel("test site (vs. other sites)")
            bottom.set_ylabel("age band (years)")
    return im


def aod_figure(panels: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]], title: str,
               class_label: str, limit: float | None = None, ncols: int = 3) -> Figure:
    """AOD heatmaps, one column per model: sites × classes on top, age bands × classes below.

    Parameters
    ----------
    panels : mapping of str to (DataFrame, DataFrame)
        Panel title → (site × class AOD, age band × class AOD), all with the same rows.
    title : str
        Figure title.
    class_label : str
        x-axis label (e.g. "density class").
    limit : float, optional
        Colour scale is [-limit, limit]; defaults to `symmetric_limit` of the panels.
        Pass one limit to several figures to make them comparable.
    ncols : int
        Panels per row; more wrap onto further rows so the figure stays printable.

    Returns
    -------
    matplotlib.figure.Figure
    """
    first = next(iter(panels.values()))
    rows, n_cls, cols = (len(first[0]), len(first[1])), first[0].shape[1], min(ncols, len(panels))
    blocks = -(-len(panels) // cols)
    fig = Figure(figsize=(cols * (0.5 * n_cls + 0.5) + 2.8, blocks * (0.3 * sum(rows) + 1.6) + 0.6),
                 layout="constrained")
    limit = limit or symmetric_limit([m for p in panels.values() for m in p])
    axes = _aod_axes(fig, len(panels), rows, cols)
    im = _draw_aod(axes, panels, TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit), cols, class_label)
    fig.colorbar(im, ax=[a for pair in axes for a in pair], shrink=0.6, aspect=30,
                 label="AOD = ΔTPR + ΔFPR, group − rest (unitless)")
    fig.suptitle(title)
    return fig


def _site_legend(fig: Figure, styles: Mapping[str, Style], sites: Sequence[str],
                 extra: Sequence[Line2D] = ()) -> None:
    handles = [Line2D([], [], color=styles[s][0], marker=styles[s][1], lw=1, label=s) for s in sites]
    fig.legend(handles=[*handles, *extra], loc="outside lower center", ncol=6, fontsize=8,
               frameon=False)


def _round_panels(frames: Mapping[str, pd.DataFrame], styles: Mapping[str, Style],
                  title: str) -> tuple[Figure, list[Axes]]:
    """One panel per method, a line per site (frame columns) against round (frame index)."""
    fig = Figure(figsize=(max(4.2 * len(frames), 6.5), 4.6), layout="constrained")
    axes = list(fig.subplots(1, len(frames), squeeze=False, sharey=True)[0])
    for ax, (label, frame) in zip(axes, frames.items(), strict=True):
        every = max(1, len(frame) // 8)  # a few markers identify a line without clutter
        for site in frame.columns:
            colour, marker = styles[site]
            ax.plot(frame.index, frame[site], color=colour, marker=marker, markevery=every,
                    markersize=4, lw=1.1, alpha=0.85)
        ax.set_title(label)
        ax.set_xlabel("federated round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig, axes


def curves_figure(per_site: Mapping[str, pd.DataFrame], summary: Mapping[str, pd.DataFrame],
                  styles: Mapping[str, Style], title: str) -> Figure:
    """Per-site, worst-site and mean F1 against round, one panel per method.

    Parameters
    ----------
    per_site : mapping of str to DataFrame
        Method label → F1 frame (index round, one column per site).
    summary : mapping of str to DataFrame
        Method label → frame (index round) with columns ``worst`` and ``mean``.
    styles : mapping of str to (colour, marker)
        From `site_styles`.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = _round_panels(per_site, styles, title)
    for ax, label in zip(axes, per_site, strict=True):
        ax.plot(summary[label].index, summary[label]["mean"], color="#555555", lw=2, ls="--")
        ax.plot(summary[label].index, summary[label]["worst"], color="black", lw=2.6)
    axes[0].set_ylabel("macro F1 on the site's test split (0–1)")
    extra = [Line2D([], [], color="black", lw=2.6, label="worst site"),
             Line2D([], [], color="#555555", lw=2, ls="--", label="mean over sites")]
    _site_legend(fig, styles, sorted({s for f in per_site.values() for s in f.columns}), extra)
    return fig


def weights_figure(weights: Mapping[str, pd.DataFrame], styles: Mapping[str, Style],
                   title: str) -> Figure:
    """Aggregation weight of every site against round, one panel per method.

    Parameters
    ----------
    weights : mapping of str to DataFrame
        Method label → weights (index round, one column per site).
    styles : mapping of str to (colour, marker)
        From `site_styles`.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = _round_panels(weights, styles, title)
    for ax, frame in zip(axes, weights.values(), strict=True):
        if frame.shape[1]:
            ax.axhline(1 / frame.shape[1], color="grey", lw=1, ls=":")
    axes[0].set_ylabel("site weight in aggregation (sums to 1)")
    uniform = Line2D([], [], color="grey", lw=1, ls=":", label="uniform 1/#sites")
    _site_legend(fig, styles, sorted({s for f in weights.values() for s in f.columns}), [uniform])
    return fig
