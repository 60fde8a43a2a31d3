"""The BENCHMARKS.md section of `bench_grid.py`."""

from __future__ import annotations


def _method_table(rows: list[dict]) -> list[str]:
    lines = ["| method | sequential steps (lockstep) | protocol s | FLOP bound s | step floor s "
             "| kernel floor s | ratio to bound | how |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kernel = f"{r['kernel_s']:.1f}" if r["kernel_s"] else "—"
        lines.append(f"| {r['method']} | {r['steps']:,} | {r['seconds']:.1f} | {r['flop_s']:.2f} "
                     f"| {r['floor_s']:.1f} | {kernel} | {r['ratio_to_bound']:.1f} "
                     f"| {r['path']} |")
    return lines


def _equal_work_row(r: dict) -> list[str]:
    """The baseline at the lockstep's retrain choice, where the two paths chose differently."""
    eq = r.get("equal_work_baseline_s", r["baseline_s"])
    if eq == r["baseline_s"]:
        return []
    return [f"| baseline with the lockstep's retrain choice (equal work; both retrains timed) "
            f"| {eq:.1f} | lockstep {eq / r['lockstep_s']:.1f}× faster |"]


def grid_markdown(r: dict) -> str:
    """A complete BENCHMARKS.md section from `bench_grid.main`'s results."""
    return "\n".join(_probe_part(r) + _methods_part(r) + _grid_part(r["grid"], r["tasks"])
                     + _check_part(r["check"], r["grid"]["workers"])) + "\n"


def _probe_part(r: dict) -> list[str]:
    """Unified's lockstep protocol against the DataLoader baseline, and the two paths' choices."""
    return [
        "## Pooled grid: lockstep search against a DataLoader baseline (`bench_grid.py`)", "",
        f"{r['fm']} profile, {r['task']}, {r['n_train']:,} training scans (Table-2 scale, synthetic "
        "store); the paper's search (batch {8, 16, 32} × lr {1e-3, 1e-4, 1e-5} × 3 folds × 20 epochs) "
        "plus the 50-epoch retrain of Unified. Baseline, in the same run: one DataLoader loop per "
        f"configuration and fold (`benchmarks/baseline_grid.py`, median of {r['baseline_repeats']}); "
        f"lockstep: median of {r['repeats']}; the two alternate, and the speed-up is the median of "
        f"the ratios of runs side by side. Step floor: {r['sequential_steps']:,} sequential "
        "optimizer steps × one lean update of a single probe, measured in the same run. "
        f"fp32 GEMM rate (2048², one thread): {r['gemm_gflops']:.0f} GFLOP/s.", "",
        "| what | seconds | ratio |", "|---|---|---|",
        f"| baseline: DataLoader loop per config and fold + retrain | {r['baseline_s']:.1f} | 1.0 |",
        f"| lockstep search + retrain | {r['lockstep_s']:.1f} | {r['speedup']:.1f}× faster |",
        *_equal_work_row(r),
        f"| step floor (sequential steps × lean update) | {r['step_floor_s']:.1f} "
        f"| lockstep = {r['ratio_to_floor']:.2f} × floor |",
        f"| FLOP time (forward + backward, all 28 runs) | {r['flop_s']:.2f} "
        f"| lockstep = {r['lockstep_s'] / r['flop_s']:.0f} × FLOP time |", "",
        f"Agreement: baseline chose batch {r['baseline_choice'][0]}, lr {r['baseline_choice'][1]:g} "
        f"(test macro-F1 {r['baseline_f1']:.3f}); lockstep chose batch {r['lockstep_choice'][0]}, "
        f"lr {r['lockstep_choice'][1]:g} (test macro-F1 {r['lockstep_f1']:.3f}).", "",
    ]


def _methods_part(r: dict) -> list[str]:
    """Every method's protocol time against its bound on this FM × task."""
    return [
        "Every paper.toml method on this FM × task. Bound = max(FLOP time: 6 × weight "
        "matrices × samples seen / GEMM rate; step floor: lockstep steps × lean update of the "
        "method's linear map; kernel floor: every run's steps × the "
        "method's unavoidable kernels per step — the forward and weight-gradient GEMM of each "
        "weight matrix at that batch size (each matrix in the memory order training keeps it "
        "in), the input-gradient GEMM of each one not reading the "
        "features, plus one Adam update of all its parameters (the compiled one of the stacked "
        "engines, faster than torch's fused Adam), issued back to back and "
        "measured here; FADES's heads on all N² latent pairs (each head's second layer forward "
        "and input gradient on N² rows with K − 1 outputs, its split first layer on N rows) are "
        "added to both the FLOP time and the kernel floor at the GEMM rate, no faster than any "
        "implementation could run them; "
        "for a lockstep method, each phase's steps × those kernels for all its stacked runs at "
        "once, or for the runs one after another where that is cheaper: every run updates all of "
        "its parameters at every step, however the runs are arranged. "
        "At batch 8–32 these GEMMs and the optimizer's memory traffic, not the FLOPs, set the pace). "
        f"Lockstep methods: the whole protocol, run here (median of {r['repeats']} runs). "
        "Per-config methods: the protocol's steps × their update time measured here "
        "(each batch gathered from a Table-2-size matrix; retrain assumed at batch 16). Stacked "
        "methods (`strategies.stacked`): each search phase's fold × steps × one step of its "
        "three learning rates stacked, plus the retrain's steps × one stacked run's step, "
        "measured here. Every step time is the median of 3 measurements.", "",
        *_method_table(r["methods"]),
    ]


def _grid_part(g: dict, tasks: dict) -> list[str]:
    """The whole paper.toml grid's estimate, on one process, on workers and at its bound."""
    rows = ", ".join(f"{task} {n:,} training rows ({len(sites)} sites, {c} classes)"
                     for task, (n, sites, c) in tasks.items())
    slow = ", ".join(f"{f:.2f}× at {dim} wide" for dim, f in g["slowdown"].items())
    return ["", f"Whole `paper.toml` grid (5 FMs × 2 tasks × Individual + all methods; {rows}), "
            f"estimated from the figures above at each FM's width: **{g['total_min']:.0f} minutes** on "
            f"one process — {g['lockstep']:.1f} min in lockstep rows (Individual, Unified, GroupDRO, MOE), "
            f"{g['stacked']:.0f} min in DANN and FairDisCO (search stacked by learning rate, "
            f"retrain a single stacked run) and {g['per-config']:.0f} min in FADES (one run, no search). On "
            f"{g['workers']} worker processes (`fedmammo pooled --jobs 0`; each FM × task's models "
            f"handed out largest first, {g['worker_startup_s']:.1f} s start-up per worker), each model "
            f"slower beside another, once warm, by the factor measured here with one stacked FairDisCO "
            f"search loop per core, median of 3 comparisons ({slow}; the cores share the memory "
            f"traffic of these steps): **{g['parallel_min']:.0f} minutes** "
            f"({g['grid_order_min']:.0f} with the models handed out in the grid's plain order; "
            "target ≤ 60 min on 2 cores).", "",
            f"The same grid with every row at its bound (FLOP time, step floor or kernel floor at each "
            f"FM's width, whichever is largest): **{g['bound_min']:.0f} minutes** on one core, "
            f"{g['bound_min'] / 2:.0f} on two with perfect scaling — the least this machine allows "
            f"for the protocol as specified; the estimate above is {g['total_min'] / g['bound_min']:.1f}× "
            "that."]


def _check_part(k: dict, workers: int) -> list[str]:
    """The model's prediction of a small real grid against the run itself."""
    chosen = ", ".join(f"{m} {bs}" for m, bs in k["retrain_bs"].items())
    low, high = k["model_ratios"]
    return ["", f"Check of the model, in the same run: a real `fedmammo pooled` of DANN and FairDisCO on "
            f"mammoclip (2048-wide) and medclip (512-wide) × {k.get('task', 'density')}, the paper's full "
            f"protocol on {k['scale']:g} of Table 2's rows ({k['n_train']:,} training rows; retrain batch "
            f"sizes chosen: {chosen}), took **{k['serial_s']:.0f} s** in one process, against "
            f"{k['serial_predicted_s']:.0f} s predicted by the model above from its step times "
            f"(measured/predicted {k['serial_s'] / k['serial_predicted_s']:.2f}; model by model, from "
            f"each one's `train_s` in `hparams.parquet`, {low:.2f}–{high:.2f}), and "
            f"**{k['parallel_s']:.0f} s** on {workers} workers, against {k['parallel_predicted_s']:.0f} s "
            f"predicted ({k['parallel_s'] / k['parallel_predicted_s']:.2f})."]
