from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from client.evaluation import site_counts
from server.history import METRIC_COLUMNS, RunKey, rows_from_counts
from server.tables import individual_rows, table3_cells, table3_markdown


def _sites(seed=0, n_sites=4):
    rng = np.random.default_rng(seed)
    out, raw = [], {}
    for s in range(n_sites):
        n = 200
        y = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < 0.6 + 0.1 * s, y, rng.integers(0, 3, n))
        dens = rng.choice(np.array(["A", "B", "C", "D", None], dtype=object), n)
        age = rng.uniform(30, 85, n)
        from client.evaluation import age_band

        out.append(site_counts(f"S{s}", y, pred, 3, {"density": dens, "age_band": age_band(age)}))
        raw[f"S{s}"] = (y, pred)
    return out, raw


def test_rows_match_sklearn_and_schema():
    counts, raw = _sites()
    df = rows_from_counts(RunKey("pooled", "fm", "diagnosis", "m", "all"), counts,
                          ("healthy", "benign", "malignant"))
    assert tuple(df.columns) == METRIC_COLUMNS
    for site, (y, pred) in raw.items():
        got = df[(df.site == site) & (df.metric == "f1") & (df["class"] == "macro")]["value"].item()
        assert abs(got - f1_score(y, pred, average="macro")) < 1e-9
    f1s = [f1_score(y, p, average="macro") for y, p in raw.values()]
    mean = df[(df.metric == "f1_mean")]["value"].item()
    worst = df[(df.metric == "f1_worst")]["value"].item()
    assert abs(mean - np.mean(f1s)) < 1e-12 and abs(worst - min(f1s)) < 1e-12
    kinds = set(df[df.metric == "aod"]["group_kind"])
    assert kinds == {"site", "density", "age_band"}


def test_label_kind_is_skipped():
    counts, _ = _sites()
    df = rows_from_counts(RunKey("pooled", "fm", "density", "m", "all"), counts, ("a", "b", "c"),
                          label_kind="density")
    assert "density" not in set(df["group_kind"])


def _history():
    rows = []
    rng = np.random.default_rng(1)
    sites = [f"S{i}" for i in range(6)]
    for fm, boost in (("good", 0.2), ("bad", 0.0)):
        for i in sites:
            for j in sites:
                v = 0.7 + boost if i == j else 0.3 + boost + rng.uniform(0, 0.05)
                rows.append((fm, "unified", i, j, v))
        for j in sites:
            rows.append((fm, "unified", "all", j, 0.6 + boost + rng.uniform(0, 0.05)))
    df = pd.DataFrame(rows, columns=["fm", "method", "trained_on", "site", "value"])
    df = df.assign(mode="pooled", task="density", round=None, group_kind="site", group=df.site,
                   metric="f1", **{"class": "macro"})
    return df


def test_individual_rows_are_the_flamby_matrix():
    h = _history()
    rows = individual_rows(h[h.fm == "good"])
    assert all(abs(v - 0.9) < 1e-12 for v in rows["Indiv. (internal)"].values())
    sub = h[(h.fm == "good") & (h.trained_on != "all")]
    col = sub[sub.site == "S0"]
    assert abs(rows["Indiv. (overall)"]["S0"] - col.value.mean()) < 1e-12
    assert abs(rows["Indiv. (external)"]["S0"] - col[col.trained_on != "S0"].value.mean()) < 1e-12


def test_table3_marks_significance():
    h = _history()
    cells = table3_cells(h, "density", ["good", "bad"], {"unified": "Unified"})
    ext = cells[(cells.row == "Indiv. (external)") & (cells.fm == "good")].iloc[0]
    assert ext["p_vs_ref_method_less"] < 0.05 and "▼" in ext["marks"]
    bad = cells[(cells.row == "Unified") & (cells.fm == "bad")].iloc[0]
    assert bad["p_vs_ref_fm_less"] < 0.05 and "†" in bad["marks"]
    md = table3_markdown(cells, "density", ["good", "bad"])
    assert "| Unified | **0.8" in md and md.count("\n|") == 6


def test_rows_match_group_metrics_per_block():
    """The vectorised rows equal `GroupMetrics` (an independent per-block path) group by group."""
    from server.groups import GroupMetrics
    from server.metrics import aggregate_counts

    counts, _ = _sites(seed=3, n_sites=5)
    classes = ("healthy", "benign", "malignant")
    df = rows_from_counts(RunKey("federated", "fm", "diagnosis", "m", "all", 4), counts, classes,
                          scalars=[{"site": "S1", "metric": "train_loss", "value": 0.25}])
    blocks = [(sc.site, kind, {g: cm for (k, g), cm in sc.counts.items() if k == kind})
              for sc in counts for kind in ("density", "age_band")]
    pooled = aggregate_counts(counts)
    blocks += [("all", kind, {g: cm for (k, g), cm in pooled.items() if k == kind})
               for kind in ("site", "density", "age_band")]
    for site, kind, groups in blocks:
        gm = GroupMetrics(groups, classes)
        want = gm.by_group().merge(gm.difference_vs_rest(), on=["group", "class"])
        rates = df.metric.isin(["tpr", "fpr", "support", "eod", "aod"])
        got = df[(df.site == site) & (df.group_kind == kind) & rates].pivot_table(
            index=["group", "class"], columns="metric", values="value", dropna=False)
        for metric in ("tpr", "fpr", "support", "eod", "aod"):
            expect = want.set_index(["group", "class"])[metric].sort_index()
            np.testing.assert_allclose(got[metric].sort_index().to_numpy(), expect.to_numpy(), atol=1e-12)
    loss = df[df.metric == "train_loss"]
    assert loss[["site", "group", "class"]].values.tolist() == [["S1", "S1", "all"]]
    assert loss["value"].item() == 0.25 and set(df["round"]) == {4}


def test_scalars_alone_make_a_frame():
    df = rows_from_counts(RunKey("federated", "fm", "density", "m", "all", 1), [], ("a", "b"),
                          scalars=[{"site": "all", "metric": "n_missing", "value": 3.0}])
    assert tuple(df.columns) == METRIC_COLUMNS and df["value"].tolist() == [3.0]


def test_history_frame_of_many_rounds_equals_their_frames(tmp_path):
    from server.history import history_frame, round_rows

    counts, _ = _sites()
    classes = ("healthy", "benign", "malignant")
    rounds = [round_rows(RunKey("federated", "fm", "diagnosis", "m", "all", r), counts[:r + 1], classes,
                         scalars=[{"site": "S0", "metric": "train_loss", "value": 0.1 * r}])
              for r in (1, 2, 3)]
    whole = history_frame(rounds)
    pd.testing.assert_frame_equal(whole, pd.concat([r.frame() for r in rounds], ignore_index=True))
    assert tuple(whole.columns) == METRIC_COLUMNS and whole["round"].dtype == "Int64"
    # A resumed run: earlier rounds read back from their parquet part, then new rounds' rows.
    whole.to_parquet(tmp_path / "h.parquet")
    first = pd.read_parquet(tmp_path / "h.parquet").query("round == 1").reset_index(drop=True)
    pd.testing.assert_frame_equal(history_frame([first, rounds[1], rounds[2]]), whole)
    for r, rows in zip((1, 2, 3), rounds, strict=True):
        mean = whole[(whole["round"] == r) & (whole.metric == "f1_mean")]["value"].item()
        assert rows.value("f1_mean") == mean
    assert np.isnan(rounds[0].value("no such metric"))
    pooled = rows_from_counts(RunKey("pooled", "fm", "diagnosis", "m", "all"), counts, classes)
    assert pooled["round"].isna().all() and pooled["round"].dtype == "Int64"
    assert history_frame([]).empty


def test_a_checkpoint_part_reads_back_as_the_history_frame(tmp_path):
    from client.atomic import write_arrow, write_parquet
    from server.history import history_frame, read_history_part, round_rows, rows_table

    counts, _ = _sites()
    rounds = [round_rows(RunKey("federated", "fm", "density", "m", "all", r), counts, ("a", "b", "c"),
                         label_kind="density") for r in (4, 5)]
    write_arrow(tmp_path / "part.arrow", rows_table(rounds))
    write_parquet(tmp_path / "part.parquet", history_frame(rounds))  # a part of an earlier version
    for name in ("part.arrow", "part.parquet"):
        pd.testing.assert_frame_equal(read_history_part(tmp_path / name), history_frame(rounds))
