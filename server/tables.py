"""Table 3 of the paper from the run history: F1 mean ± sd across test sites.

Each row is a vector of F1 over test sites, which is what both the mean ± sd and the
paired Wilcoxon tests use (FLamby's "Local i evaluated on every site" matrix):

* ``Indiv. (internal)``: site j's own probe on site j's test split, ``M[j, j]``;
* ``Indiv. (external)``: for test site j, the mean over the other sites' probes,
  ``mean_{i != j} M[i, j]``;
* ``Indiv. (overall)``: for test site j, the mean over all probes, ``mean_i M[i, j]``;
* a method trained on all sites: its F1 on each test site.

Significance (one-sided Wilcoxon signed-rank, paired on test sites): ``▲``/``▼`` higher or
lower than the reference method row (the first method, Unified in the paper), ``†`` lower
than the reference FM column (the first FM, MammoCLIP in the paper); ``**`` p < 0.01,
``*`` p < 0.05. (The paper's legend prints ``*`` for p < 0.01 and ``**`` for p < 0.05;
we use the usual order.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from server.history import ALL_SITES
from server.metrics import site_summary, wilcoxon_greater

INDIVIDUAL_ROWS = ("Indiv. (internal)", "Indiv. (external)", "Indiv. (overall)")


def _f1(history: pd.DataFrame) -> pd.DataFrame:
    sel = (history["metric"] == "f1") & (history["class"] == "macro") & (history["group_kind"] == "site")
    return history.loc[sel & (history["site"] != ALL_SITES)]


def individual_rows(f1: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The three Individual rows as ``{row: {test site: F1}}`` from single-site models."""
    indiv = f1[f1["trained_on"] != ALL_SITES]
    if indiv.empty:
        return {}
    m = indiv.pivot_table(index="trained_on", columns="site", values="value", aggfunc="mean")
    internal, external, overall = {}, {}, {}
    for j in m.columns:
        if j in m.index and np.isfinite(m.loc[j, j]):
            internal[j] = float(m.loc[j, j])
        others = m.loc[[i for i in m.index if i != j], j].dropna()
        if len(others):
            external[j] = float(others.mean())
        overall[j] = float(m[j].dropna().mean())
    return dict(zip(INDIVIDUAL_ROWS, (internal, external, overall), strict=True))


def method_rows(f1: pd.DataFrame, methods: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Rows of methods trained on all sites: ``{label: {test site: F1}}``."""
    pooled = f1[f1["trained_on"] == ALL_SITES]
    out = {}
    for method, label in methods.items():
        sel = pooled[pooled["method"] == method]
        if not sel.empty:
            out[label] = dict(zip(sel["site"], sel["value"].astype(float), strict=True))
    return out


def _stars(p: float) -> str:
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def table3_cells(
    history: pd.DataFrame, task: str, fms: Sequence[str], methods: Mapping[str, str]
) -> pd.DataFrame:
    """Table 3 of one task as a frame: one row per (row label, FM).

    Parameters
    ----------
    history : pandas.DataFrame
        Pooled run history (`server.history.METRIC_COLUMNS`).
    task : str
        Which task.
    fms : sequence of str
        Column order; the first FM is the reference for the ``†`` test.
    methods : mapping of str to str
        Method name → row label, in row order; the first is the reference row.

    Returns
    -------
    pandas.DataFrame
        Columns row, fm, mean, sd, n_sites, p_vs_ref_method_less, p_vs_ref_method_greater,
        p_vs_ref_fm_less, marks.
    """
    rows = {fm: {} for fm in fms}
    for fm in fms:
        f1 = _f1(history[(history["task"] == task) & (history["fm"] == fm)])
        rows[fm] = individual_rows(f1) | method_rows(f1, methods)
    ref_row = next(iter(methods.values()), None)
    out = []
    for fm in fms:
        for label, values in rows[fm].items():
            s = site_summary(values)
            ref = rows[fm].get(ref_row, {}) if label != ref_row else {}
            fm_ref = rows[fms[0]].get(label, {}) if fm != fms[0] else {}
            p_less, p_greater = wilcoxon_greater(ref, values), wilcoxon_greater(values, ref)
            p_fm = wilcoxon_greater(fm_ref, values)
            marks = "".join(
                sym + _stars(p) for sym, p in (("▲", p_greater), ("▼", p_less), ("†", p_fm))
                if np.isfinite(p) and p < 0.05
            )
            out.append({"row": label, "fm": fm, "mean": s["mean"], "sd": s["sd"],
                        "n_sites": s["n_sites"], "p_vs_ref_method_less": p_less,
                        "p_vs_ref_method_greater": p_greater, "p_vs_ref_fm_less": p_fm,
                        "marks": marks})
    return pd.DataFrame(out)


def table3_markdown(cells: pd.DataFrame, task: str, fms: Sequence[str]) -> str:
    """Render `table3_cells` as a Markdown table; the best mean of each column is bold."""
    if cells.empty:
        return f"### {task.capitalize()}\n\n(no results)\n"
    order = list(dict.fromkeys(cells["row"]))
    trained = cells[~cells["row"].isin(INDIVIDUAL_ROWS)]
    best = trained.groupby("fm")["mean"].max() if not trained.empty else pd.Series(dtype=float)
    lines = [f"### {task.capitalize()}", "", "| | " + " | ".join(fms) + " |",
             "|---|" + "---|" * len(fms)]
    for label in order:
        cellrow = []
        for fm in fms:
            c = cells[(cells["row"] == label) & (cells["fm"] == fm)]
            if c.empty or not np.isfinite(c["mean"].iloc[0]):
                cellrow.append("—")
                continue
            text = f"{c['mean'].iloc[0]:.2f} ± {c['sd'].iloc[0]:.2f}"
            if label not in INDIVIDUAL_ROWS and np.isclose(c["mean"].iloc[0], best.get(fm, np.nan)):
                text = f"**{text}**"
            cellrow.append(f"{text} {c['marks'].iloc[0]}".strip())
        lines.append(f"| {label} | " + " | ".join(cellrow) + " |")
    return "\n".join(lines) + "\n"


LEGEND = (
    "F1 (macro over classes) per test site, mean ± sd across sites. ▲/▼: higher/lower "
    "than the first method row, †: lower than the first FM column (one-sided Wilcoxon "
    "signed-rank, paired on test sites); ** p < 0.01, * p < 0.05. Bold: best trained "
    "row per FM.\n"
)
