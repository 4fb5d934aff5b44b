"""The Markdown of a quality result: the main table (seen items kept), seen items filtered,
fidelity, speed."""

from __future__ import annotations

import pathlib


def speed_runs(result: dict) -> list[int] | None:
    """[timed runs per CPU speed figure, per exact-scoring figure] of a run that measured CPU speed
    (None for ``--no-speed``); files written before the exact column had its own count timed it once."""
    if not any(k.startswith("users_per_s_cpu256/") for row in result["rows"] for k in row):
        return None
    s = result["settings"]
    return [s["speed_repeats"], s.get("exact_speed_repeats", 1)]


def speed_caption(result: dict) -> str:
    """How many timed runs each CPU speed figure is the median of. A combined table whose runs
    timed differently says so and lists each run's counts under "Runs combined"."""
    runs = result.get("runs")
    counts = {tuple(c) for c in ([r.get("speed_runs") for r in runs] if runs else [speed_runs(result)]) if c}
    if len(counts) == 1:
        ((n, exact),) = counts
        return f"median of {n} runs after a warm-up (exact: {exact})"
    if not counts:  # --no-speed everywhere (or a combined file from before the per-run record)
        return "median of timed runs after a warm-up (no run here records its count)"
    return "median of several runs after a warm-up, as many as each run's line under 'Runs combined' says"


def _pm(agg: dict, key: str, pct: bool = True, digits: int = 2) -> str:
    v = agg.get(key)
    if v is None:
        return "–"
    scale = 100.0 if pct else 1.0
    if v["n"] > 1:
        return f"{scale * v['mean']:.{digits}f} ± {scale * v['std']:.{digits}f}"
    return f"{scale * v['mean']:.{digits}f}"


def _num(agg: dict, key: str) -> str:
    v = agg.get(key)
    if v is None:
        return "–"
    m = v["mean"]
    return f"{m:,.0f}" if m >= 100 else f"{m:,.1f}"


def headline(agg: dict, beam: int) -> str:
    """The tag of a row's headline figures: the index's beam search, or exact for brute force."""
    return f"b{beam}" if f"recall@10/b{beam}" in agg else "exact"


def overrides_sentence(overrides: list[str]) -> str:
    """The header's word on ``--set``: config overrides make a budgeted run; ``life.*`` overrides
    only choose which lifecycle steps run (``life.recforest_trees=[4]``), the configs stay at their
    ``CONFIGS`` sizes unless a config override says otherwise."""
    cfg = [o for o in overrides if not o.startswith("life.")]
    life = [o for o in overrides if o.startswith("life.")]
    return (f" Config overrides (a budgeted run): `{' '.join(cfg)}`." if cfg else "") + (
        f" Lifecycle overrides: `{' '.join(life)}`" + ("" if cfg else " (every config at its `CONFIGS` size)") + "."
        if life
        else ""
    )


def markdown(result: dict) -> str:
    agg, beams = result["aggregate"], result["settings"]["beams"]
    hb = max(beams)
    m = result["machine"]
    combined = bool(result.get("combined_from"))
    lines = [
        f"# Quality on {result['dataset_label']}",
        "",
        f"{result['data']['train_windows']:,} training windows, {result['data']['test_users']} test users, "
        f"{result['data']['n_items']:,} items"
        + (
            f" ({result['data']['windows_per_item']:.1f} training windows per item; "
            f"{100 * result['data']['items_never_target']:.0f}% of the items are the target of no window, "
            f"{100 * result['data']['items_under_5_targets']:.0f}% of fewer than 5)"
            if "windows_per_item" in result["data"]
            else ""
        )
        + f"; seeds{' (all rows)' if combined else ''} "
        f"{result['settings'].get('seeds_done', result['settings']['seeds'])} (split and model)"
        + (
            ""
            if result.get("complete", True)
            else " (a run below was cut short: its finished seeds only)"
            if combined
            else " (run not finished: seeds done so far)"
        )
        + "; "
        f"mean ± std over seeds, percent. Machine: {m['gpu'] or 'no GPU'}, {m['cpu_count']} CPU cores "
        f"({m['cpu_model']}), torch {m['torch']}. Command: `{result['command']}`."
        + overrides_sentence(result["settings"].get("overrides", [])),
        "",
        f"## Test users, seen items kept; indexes at beam {hb}, baselines exact",
        "",
    ]
    if combined:  # rows of several runs: each row says its seeds; the runs' budgets below the table
        lines += [
            "| model | seeds | P@10 | R@10 | F@10 | NDCG@10 | P@50 | R@50 | F@50 | NDCG@50 | NDCG@20 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "| model | P@10 | R@10 | F@10 | NDCG@10 | P@50 | R@50 | F@50 | NDCG@50 | NDCG@20 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for a in agg:
        t = headline(a, hb)
        cells = [_pm(a, f"{n}@{k}/{t}") for k in (10, 50) for n in ("precision", "recall", "f1", "ndcg")]
        seeds = [",".join(map(str, a["seeds"]))] if combined else []
        lines.append(f"| {a['model']} | " + " | ".join(seeds + cells + [_pm(a, f"ndcg@20/{t}")]) + " |")
    if combined:
        lines += ["", "Runs combined (each method's overrides; none = the `CONFIGS` sizes):", ""]
        lines += [
            f"- `{pathlib.Path(r['file']).name}`: {', '.join(r['methods'] or [])}, seeds {r['seeds']}"
            + ("" if r.get("complete", True) else " (cut short)")
            + (f", `{' '.join(r['overrides'])}`" if r["overrides"] else "")
            + (
                f"; CPU speed: median of {r['speed_runs'][0]} runs (exact: {r['speed_runs'][1]})"
                if r.get("speed_runs")
                else ""
            )
            for r in result["runs"]
        ]
        reps = result.get("repeats", [])
        if reps:
            worst = max((v for rep in reps for v in rep["abs_diff"].values()), default=0.0)
            again = sorted({rep["model"] for rep in reps})
            lines += [
                "",
                f"{len(reps)} (row, seed) pairs were measured again by a later run (rows: "
                f"{', '.join(again)}); the first run's row is kept, and the repeats' exhaustive R@10/R@50 "
                f"differ from it by at most {100 * worst:.2f} points.",
            ]
    lines += [
        "",
        "## Seen items filtered (TDM Table 2 style), same beams",
        "",
        "| model | P@10 | R@10 | P@50 | R@50 | NDCG@20 | Novelty@10 (kept) |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in agg:
        t = headline(a, hb)
        cells = [_pm(a, f"{n}@{k}/filtered/{t}") for k in (10, 50) for n in ("precision", "recall")]
        lines.append(
            f"| {a['model']} | "
            + " | ".join(cells + [_pm(a, f"ndcg@20/filtered/{t}"), _pm(a, f"novelty@10/{t}")])
            + " |"
        )
    lines += [
        "",
        "## Fidelity: recall(beam) / recall(same model, every item); the model's exhaustive recall",
        "",
        "| model | R@10 exact | R@50 exact | "
        + " | ".join(f"fid@10 b{b} | fid@50 b{b}" for b in beams)
        + " | cand./user b"
        + str(hb)
        + " |",
        "|---|---|---|" + "---|---|" * len(beams) + "---|",
    ]
    for a in agg:
        if headline(a, hb) == "exact":
            continue
        cells = [_pm(a, "recall@10/exact"), _pm(a, "recall@50/exact")]
        cells += [_pm(a, f"fidelity@{k}/b{b}", pct=False, digits=3) for b in beams for k in (10, 50)]
        cells.append(_num(a, f"candidates/b{hb}"))
        lines.append(f"| {a['model']} | " + " | ".join(cells) + " |")
    dev = "cuda" if m["gpu"] else "cpu"
    lines += [
        "",
        f"## Speed: training samples/s ({result['settings']['device']}), search users/s",
        "",
        f"CPU columns: batch 256, {result['settings']['cpu_threads']} threads, {speed_caption(result)}, "
        "first seed, final model of each lifecycle. "
        f"'eval {dev.upper()}' columns: the whole test-set evaluation in batches of 256 on {dev.upper()}.",
        "",
        "| model | train samples/s | "
        + " | ".join(f"CPU b{b}" for b in beams)
        + " | CPU exact | "
        + " | ".join(f"eval {dev.upper()} b{b}" for b in beams)
        + f" | eval {dev.upper()} exact |",
        "|---|---|" + "---|" * (2 * len(beams) + 2),
    ]
    for a in agg:
        cells = [_num(a, "train_samples_per_s")] + [_num(a, f"users_per_s_cpu256/b{b}") for b in beams]
        cells += [_num(a, "users_per_s_cpu256/exact")] + [_num(a, f"users_per_s_{dev}/b{b}") for b in beams]
        cells.append(_num(a, f"users_per_s_{dev}/exact"))
        lines.append(f"| {a['model']} | " + " | ".join(cells) + " |")
    if result["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e['method']} seed {e['seed']}: {e['error']}" for e in result["errors"]]
    return "\n".join(lines) + "\n"
