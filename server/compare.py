"""Federated versus pooled: the same method, the same sites, data moved or not.

For each method × FM × task present in both runs: mean F1 across test sites, worst-site
F1, sd across sites and the largest |AOD| (over every group kind, pooled across sites),
for the pooled model and for the federated model's final round; and one-sided Wilcoxon
signed-rank p-values, paired on sites, for "federated < pooled" and "federated > pooled".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from server.history import ALL_SITES, final_round
from server.metrics import site_summary, wilcoxon_greater


def _per_site_f1(h: pd.DataFrame) -> dict[str, float]:
    sel = h[(h["metric"] == "f1") & (h["class"] == "macro") & (h["group_kind"] == "site")
            & (h["site"] != ALL_SITES)]
    return dict(zip(sel["site"], sel["value"].astype(float), strict=True))


def _max_abs_aod(h: pd.DataFrame) -> float:
    aod = h[(h["metric"] == "aod") & (h["site"] == ALL_SITES)]["value"].abs()
    return float(aod.max()) if aod.notna().any() else float("nan")


def compare(pooled: pd.DataFrame, federated: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, fm, task) in both histories.

    Parameters
    ----------
    pooled : pandas.DataFrame
        Pooled history; only models trained on all sites are used.
    federated : pandas.DataFrame
        Federated history; only each run's final round is used.

    Returns
    -------
    pandas.DataFrame
        Columns method, fm, task, {pooled,federated}_{mean,worst,sd,max_abs_aod},
        n_sites, p_federated_lower, p_federated_higher.
    """
    pooled = pooled[pooled["trained_on"] == ALL_SITES]
    federated = final_round(federated)
    rows = []
    keys = sorted(set(map(tuple, pooled[["method", "fm", "task"]].drop_duplicates().to_numpy()))
                  & set(map(tuple, federated[["method", "fm", "task"]].drop_duplicates().to_numpy())))
    for method, fm, task in keys:
        row: dict[str, object] = {"method": method, "fm": fm, "task": task}
        f1 = {}
        for mode, h in (("pooled", pooled), ("federated", federated)):
            sel = h[(h["method"] == method) & (h["fm"] == fm) & (h["task"] == task)]
            f1[mode] = _per_site_f1(sel)
            s = site_summary(f1[mode])
            row |= {f"{mode}_mean": s["mean"], f"{mode}_worst": s["worst"], f"{mode}_sd": s["sd"],
                    f"{mode}_max_abs_aod": _max_abs_aod(sel)}
        row["n_sites"] = len(set(f1["pooled"]) & set(f1["federated"]))
        row["p_federated_lower"] = wilcoxon_greater(f1["pooled"], f1["federated"])
        row["p_federated_higher"] = wilcoxon_greater(f1["federated"], f1["pooled"])
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_markdown(table: pd.DataFrame) -> str:
    """Render `compare` as Markdown, one table per task."""
    if table.empty:
        return "(no method × FM × task appears in both runs)\n"

    def fmt(v: object) -> str:
        return "—" if not np.isfinite(float(v)) else f"{float(v):.3f}"

    out = []
    for task, part in table.groupby("task", sort=False):
        out += [f"### {str(task).capitalize()}", "",
                "| method | FM | mean F1 pooled → fed | worst pooled → fed | sd pooled → fed "
                "| max abs AOD pooled → fed | p(fed < pooled) | p(fed > pooled) |",
                "|---|---|---|---|---|---|---|---|"]
        for r in part.to_dict("records"):
            cells = [f"{fmt(r[f'pooled_{m}'])} → {fmt(r[f'federated_{m}'])}"
                     for m in ("mean", "worst", "sd", "max_abs_aod")]
            out.append(f"| {r['method']} | {r['fm']} | " + " | ".join(cells)
                       + f" | {fmt(r['p_federated_lower'])} | {fmt(r['p_federated_higher'])} |")
        out.append("")
    return "\n".join(out)
