"""The table and the plot of `benchmarks.curves`: one row per measured point (index, knob,
recall@k, users/s, candidates per user), recall against users/s on a log axis."""

from __future__ import annotations

BATCH = 256


def curve_label(name: str, config: dict) -> str:
    """What the curve's index is: the method and the lifecycle `train_into_store` ran."""
    return {
        "tdm": "TDM (k-means relearn x1)",
        "jtm": "JTM (tree learning x1)",
        "deforec": "DeFoRec (forest of 2)",
        "recforest": f"RecForest ({config.get('trees', '?')} trees)",
        "dr": f"DR (J={config.get('n_paths', '?')}, EM x1)",
    }.get(name, name)


def labelled_points(name: str, measured) -> tuple[str, list]:
    """A method's curve in a results file -> (label, points); files written before the store mode
    hold a bare list of points."""
    if isinstance(measured, dict):
        return curve_label(name, measured["config"]), measured["points"]
    return name, measured


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for name, m in result["methods"].items():
        label, pts = labelled_points(name, m)
        ax.plot([p["users_per_s"] for p in pts], [100 * p["recall"] for p in pts], "o-", label=f"{label}, beam")
        for p in pts:
            ax.annotate(
                str(p["beam"]),
                (p["users_per_s"], 100 * p["recall"]),
                fontsize=6,
                textcoords="offset points",
                xytext=(3, 3),
            )
    for label, pts in result["two_tower"].items():
        if isinstance(pts, list):
            ax.plot(
                [p["users_per_s"] for p in pts],
                [100 * p["recall"] for p in pts],
                "s--" if label != "exact" else "k*",
                label=f"two-tower {label}",
                markersize=9 if label == "exact" else 5,
            )
    ax.set_xscale("log")
    ax.set_xlabel("users per second (CPU, batch 256)")
    ax.set_ylabel(f"Recall@{result['k']} (%)")
    ax.set_title(f"{result['dataset']}: efficiency vs accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the curves fill the plot
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    """One row per measured point: index, knob, Recall@k, users/s (and candidates per user)."""
    m = result["machine"]
    lines = [
        f"# Efficiency vs accuracy: {result['dataset']}",
        "",
        f"Split {result.get('split', 'seed0')}, {result['n_items']:,} items, {result['test_users']} test users, "
        f"k = {result['k']}, seen items kept; users/s on the CPU at batch {result.get('batch', BATCH)}, "
        f"{result['threads']} thread(s), median of {result['repeats']} timed passes after a warm-up. "
        f"Machine: {m.get('cpu_count', '?')} CPUs, {m.get('cpu_model', '?')}, GPU {m.get('gpu') or 'none'}; "
        f"load average after: {', '.join(f'{x:.2f}' for x in result.get('load_after', []))}.",
        "",
        f"| index | knob | value | Recall@{result['k']} (%) | users/s | candidates/user |",
        "|---|---|---|---|---|---|",
    ]
    for name, meth in result["methods"].items():
        label, pts = labelled_points(name, meth)
        for p in pts:
            cand = p.get("candidates")
            lines.append(
                f"| {label} | beam | {p['beam']} | {100 * p['recall']:.2f} | {p['users_per_s']:,.0f} | "
                f"{'' if cand is None else f'{cand:.1f}'} |"
            )
    knobs = {"exact": "", "hnsw": "efSearch", "ivf": "nprobe"}
    for label, pts in result.get("two_tower", {}).items():
        if isinstance(pts, list):
            for p in pts:
                lines.append(
                    f"| two-tower {label} | {knobs.get(label, '')} | {'' if p['param'] is None else p['param']} "
                    f"| {100 * p['recall']:.2f} | {p['users_per_s']:,.0f} | |"
                )
        else:
            lines.append(f"| two-tower {label} | | | {pts} | | |")
    return "\n".join(lines) + "\n"
