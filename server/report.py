"""``fedmammo report``: one Markdown report, its figures (PNG) and its tables (CSV).

The input is a demo-style folder (``pooled/`` and/or ``federated/``, each with a
``metrics.parquet``) or a single run folder holding ``metrics.parquet`` (its ``mode``
column says which). Tables reuse `server.tables` and `server.compare`, so the report's
numbers are the ones ``table3.md`` and ``comparison.md`` print; figures are drawn by
`server.figures`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from client.atomic import write_text
from client.feature_store import PROVENANCE, list_entries
from server import figures
from server.compare import compare, comparison_markdown
from server.history import ALL_SITES, final_round
from server.report_guides import (
    HOW_AOD,
    HOW_COMPARE,
    HOW_CURVES,
    HOW_TABLE3,
    HOW_TSNE,
    HOW_WEIGHTS,
)
from server.tables import LEGEND, table3_cells, table3_markdown

#: Federated final-round models join Table 3 as extra methods under this suffix.
FED_SUFFIX = "@fed"
AGE_ORDER = ("<40", "40-70", ">70")


@dataclass(frozen=True)
class Results:
    """The histories (and feature store, when found) of one results folder."""

    root: Path
    pooled: pd.DataFrame | None
    federated: pd.DataFrame | None
    store: Path | None


def load_results(results_dir: str | Path) -> Results:
    """Read a run folder (``metrics.parquet``) or a demo-style one (``pooled/``, ``federated/``).

    Raises `FileNotFoundError`, naming the folder, when neither layout holds a history.
    """
    root = Path(results_dir)
    frames: dict[str, pd.DataFrame] = {}
    if (root / "metrics.parquet").is_file():
        history = pd.read_parquet(root / "metrics.parquet")
        frames = {str(m): part for m, part in history.groupby("mode", sort=False)}
        stores = [root / "store"]
    else:
        for mode in ("pooled", "federated"):
            if (root / mode / "metrics.parquet").is_file():
                frames[mode] = pd.read_parquet(root / mode / "metrics.parquet")
        stores = [root / "pooled" / "store", root / "federated" / "store", root / "store"]
    if not {"pooled", "federated"} & set(frames):
        raise FileNotFoundError(f"{root}: no metrics.parquet of a pooled or federated run "
                                "(expected one there or under pooled/ or federated/)")
    store = next((s for s in stores if list_entries(s)), None)
    return Results(root, frames.get("pooled"), frames.get("federated"), store)


def _label(method: str) -> str:
    from strategies.base import get_method  # imports torch: only once a label is needed

    try:
        return get_method(method).label
    except KeyError:
        return method


def _ordered(values: Iterable[str], first: str | None = None) -> list[str]:
    """Distinct values in order of appearance, ``first`` moved to the front (the reference)."""
    out = [str(v) for v in dict.fromkeys(values)]
    return [first, *(v for v in out if v != first)] if first in out else out


def _slug(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", p) for p in parts)


def _trained(history: pd.DataFrame) -> list[str]:
    # The reference row is the probe the Individual rows use (the paper's Unified).
    indiv = history.loc[history["trained_on"] != ALL_SITES, "method"]
    reference = str(indiv.iloc[0]) if len(indiv) else None
    return _ordered(history.loc[history["trained_on"] == ALL_SITES, "method"], reference)


def table3_history(res: Results) -> tuple[pd.DataFrame, dict[str, str]]:
    """Pooled rows plus federated final-round rows as extra methods, and their row labels."""
    parts, labels = [], {}
    if res.pooled is not None:
        parts.append(res.pooled)
        labels |= {m: _label(m) for m in _trained(res.pooled)}
    if res.federated is not None:
        last = final_round(res.federated)
        parts.append(last.assign(method=last["method"] + FED_SUFFIX))
        labels |= {m + FED_SUFFIX: f"{_label(m)} (fed.)" for m in _trained(last)}
    return pd.concat(parts, ignore_index=True), labels


def _write_csv(out: Path, name: str, frame: pd.DataFrame) -> str:
    write_text(out / "tables" / name, frame.to_csv(index=False))
    return f"tables/{name}"


def _image(out: Path, name: str, fig: figures.Figure, alt: str) -> str:
    figures.save_png(fig, out / "figures" / name)
    return f"![{alt}](figures/{name})\n"


def table3_section(res: Results, out: Path) -> str:
    """Table 3 per task (Markdown, plus ``tables/table3_<task>.csv``)."""
    history, labels = table3_history(res)
    fms = _ordered(history["fm"])
    md = ["## Table 3 — F1 across test sites\n", LEGEND, HOW_TABLE3]
    for task in _ordered(history["task"]):
        cells = table3_cells(history, task, fms, labels)
        csv = _write_csv(out, f"table3_{_slug(task)}.csv", cells.assign(task=task))
        md += [table3_markdown(cells, task, fms), f"CSV with p-values: [{csv}]({csv})\n"]
    return "\n".join(md)


def comparison_section(res: Results, out: Path) -> str:
    """Federated vs pooled per method × FM × task (needs both modes)."""
    if res.pooled is None or res.federated is None:
        return ""
    table = compare(res.pooled, res.federated)
    csv = _write_csv(out, "comparison.csv", table)
    return "\n".join(["## Federated vs pooled\n", comparison_markdown(table), HOW_COMPARE,
                      f"CSV: [{csv}]({csv})\n"])


def tsne_section(res: Results, out: Path, styles: dict[str, figures.Style], per_site: int,
                 seed: int) -> str:
    """Fig. 1: one t-SNE figure per FM in the store."""
    if res.store is None:
        return "## Feature embeddings (t-SNE)\n\n(no feature store found next to the results)\n"
    have = list_entries(res.store)
    used = [f for f in _ordered(pd.concat([h["fm"] for h in _histories(res)])) if f in have] or list(have)
    md = ["## Feature embeddings (t-SNE, Fig. 1)\n"]
    for fm in used:
        x, meta = figures.tsne_sample(res.store, fm, per_site, seed)
        fig = figures.tsne_figure(figures.tsne_embedding(x, seed), meta, fm, styles)
        md.append(_image(out, f"tsne_{_slug(fm)}.png", fig, f"t-SNE of {fm} features"))
    return "\n".join([*md, HOW_TSNE])


def _histories(res: Results) -> list[pd.DataFrame]:
    return [h for h in (res.pooled, res.federated) if h is not None]


def classes_of(history: pd.DataFrame) -> list[str]:
    """The task's class names in label order (the per-class F1 rows are written in it)."""
    sel = (history["metric"] == "f1") & ~history["class"].isin(["macro", "all"])
    return _ordered(history.loc[sel, "class"])


def aod_matrix(history: pd.DataFrame, kind: str, classes: list[str]) -> pd.DataFrame:
    """AOD of each group of ``kind`` (vs the rest, pooled over sites) × class."""
    sel = history[(history["metric"] == "aod") & (history["site"] == ALL_SITES)
                  & (history["group_kind"] == kind)]
    return sel.pivot_table(index="group", columns="class", values="value", aggfunc="mean",
                           dropna=False).reindex(columns=classes)


def _rows(mats: Iterable[pd.DataFrame], kind: str) -> list[str]:
    groups = sorted({str(g) for m in mats for g in m.index})
    if kind == "age_band":
        groups = [g for g in AGE_ORDER if g in groups] + [g for g in groups if g not in AGE_ORDER]
    return groups


def _models(res: Results) -> Iterable[tuple[str, pd.DataFrame]]:
    """(mode, history of its models trained on all sites; federated at the final round)."""
    if res.pooled is not None:
        yield "pooled", res.pooled[res.pooled["trained_on"] == ALL_SITES]
    if res.federated is not None:
        yield "federated", final_round(res.federated)


def aod_panels(part: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Method label → (site × class, age band × class) AOD, rows aligned across methods."""
    classes = classes_of(part)
    mats = {m: [aod_matrix(part[part["method"] == m], k, classes) for k in ("site", "age_band")]
            for m in _trained(part)}
    rows = [_rows((v[i] for v in mats.values()), k) for i, k in enumerate(("site", "age_band"))]
    return {_label(m): (site.reindex(rows[0]), age.reindex(rows[1])) for m, (site, age) in mats.items()}


def aod_section(res: Results, out: Path) -> str:
    """Fig. 2 (top): one AOD figure per mode × FM × task, one panel per method."""
    figs = {(mode, str(fm), str(task)): aod_panels(part) for mode, models in _models(res)
            for (fm, task), part in models.groupby(["fm", "task"], sort=False)}
    # One colour scale for every AOD figure, so pooled and federated panels compare by eye.
    limit = figures.symmetric_limit([m for p in figs.values() for pair in p.values() for m in pair])
    md = ["## Fairness: AOD per site and age band (Fig. 2)\n"]
    for (mode, fm, task), panels in figs.items():
        if not any(m.size for pair in panels.values() for m in pair):
            continue
        cls = "density class (BI-RADS)" if task == "density" else f"{task} class"
        fig = figures.aod_figure(panels, f"AOD, {mode} models — {fm}, {task}", cls, limit)
        md += [f"### {mode.capitalize()} — {fm}, {task}\n",
               _image(out, f"aod_{_slug(mode, fm, task)}.png", fig, f"AOD heatmaps, {mode}, {fm}, {task}")]
    return "\n".join([*md, HOW_AOD])


def _by_round(h: pd.DataFrame, metric: str, cls: str) -> pd.DataFrame:
    sel = h[(h["metric"] == metric) & (h["class"] == cls) & (h["group_kind"] == "site")]
    return sel.pivot_table(index="round", columns="site", values="value", aggfunc="mean").sort_index()


def _curve_frames(part: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], ...]:
    """Per method label: per-site F1, worst/mean F1 and site weights (when reported) by round."""
    per_site, summary, weights = {}, {}, {}
    for method in _trained(part):
        h, label = part[part["method"] == method], _label(method)
        per_site[label] = _by_round(h, "f1", "macro").drop(columns=[ALL_SITES], errors="ignore")
        summary[label] = pd.DataFrame({k: _by_round(h, f"f1_{k}", "macro")[ALL_SITES]
                                       for k in ("worst", "mean")})
        w = _by_round(h, "site_weight", "all")
        if not w.empty:
            weights[label] = w
    return per_site, summary, weights


def curves_section(res: Results, out: Path, styles: dict[str, figures.Style]) -> str:
    """Per-round F1 curves and site weights of every federated FM × task."""
    if res.federated is None:
        return ""
    md = ["## Federated training curves\n"]
    for (fm, task), part in res.federated.groupby(["fm", "task"], sort=False):
        per_site, summary, weights = _curve_frames(part)
        name = _slug(str(fm), str(task))
        md.append(f"### {fm}, {task}\n")
        fig = figures.curves_figure(per_site, summary, styles, f"F1 per round — {fm}, {task}")
        md += [_image(out, f"curves_{name}.png", fig, f"F1 per round, {fm}, {task}"), HOW_CURVES]
        if weights:
            fig = figures.weights_figure(weights, styles, f"Site weights per round — {fm}, {task}")
            md += [_image(out, f"weights_{name}.png", fig, f"site weights per round, {fm}, {task}"),
                   HOW_WEIGHTS]
    return "\n".join(md)


def _header(res: Results) -> str:
    hs = _histories(res)
    every = pd.concat([h[["fm", "task", "site"]] for h in hs])
    lines = [f"# fedmammo report — `{res.root}`\n",
             f"- modes: {', '.join(m for m in ('pooled', 'federated') if getattr(res, m) is not None)}",
             f"- FMs: {', '.join(_ordered(every['fm']))}; tasks: {', '.join(_ordered(every['task']))}",
             f"- test sites: {every.loc[every['site'] != ALL_SITES, 'site'].nunique()}"]
    if res.federated is not None:
        lines.append(f"- federated rounds: {int(res.federated['round'].max())}")
    if res.store is not None:
        provs = [json.loads((res.store / fm / sites[0] / PROVENANCE).read_text())
                 for fm, sites in list_entries(res.store).items()]
        synthetic = any(p.get("weights_sha256") == "synthetic" for p in provs)
        lines.append(f"- feature store: `{res.store}`" + (" (**synthetic** features: not evidence "
                                                          "about real FMs)" if synthetic else ""))
    return "\n".join(lines) + "\n"


def build_report(results_dir: str | Path, out: str | Path | None = None, *, tsne_per_site: int = 150,
                 seed: int = 0) -> Path:
    """Write ``report.md``, ``figures/*.png`` and ``tables/*.csv`` for a results folder.

    Parameters
    ----------
    results_dir : str or Path
        Demo-style folder (``pooled/``, ``federated/``) or a single run folder.
    out : str or Path, optional
        Report folder; defaults to ``results_dir/report``.
    tsne_per_site : int
        Scans per site in the t-SNE subsample.
    seed : int
        Seed of the subsample, PCA and t-SNE.

    Returns
    -------
    Path
        The written ``report.md``.
    """
    res = load_results(results_dir)
    out = Path(out) if out is not None else res.root / "report"
    sites = {str(s) for h in _histories(res) for s in h["site"].unique() if s != ALL_SITES}
    if res.store is not None:
        sites |= {s for names in list_entries(res.store).values() for s in names}
    styles = figures.site_styles(sorted(sites))
    sections = [_header(res), table3_section(res, out), comparison_section(res, out),
                tsne_section(res, out, styles, tsne_per_site, seed), aod_section(res, out),
                curves_section(res, out, styles)]
    return write_text(out / "report.md", "\n".join(s for s in sections if s))
