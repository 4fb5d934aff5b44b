"""The tables and the plot of `benchmarks.large`: per method the seconds and peak RSS of every
step, then recall@k against users/s (batch 256 and batch 1) beside the two-tower's exact search
and FAISS HNSW / IVF over its vectors."""

from __future__ import annotations

LABELS = {
    "tdm": "TDM",
    "jtm": "JTM",
    "deforec": "DeFoRec",
    "recforest": "RecForest",
    "dr": "Deep Retrieval",
    "two_tower": "two-tower (exact)",
}


def _gb(x: float) -> str:
    return f"{x:.2f}"


def steps_table(result: dict) -> list[str]:
    lines = ["| method | step | seconds | peak RSS (GiB) |", "|---|---|---|---|"]
    for s in result["steps"]:
        name = LABELS.get(s.get("method") or "", "data")
        lines.append(f"| {name} | {s['step']} | {s['seconds']:,.1f} | {_gb(s['peak_rss_gb'])} |")
    return lines


def quality_table(result: dict) -> list[str]:
    k = result["k"]
    lines = [
        f"| index | budget | beam / param | recall@{k} (%) | users/s (batch 256) | users/s (batch 1) "
        "| candidates per user |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, m in result["methods"].items():
        if m.get("before_relearn"):
            b = m["before_relearn"]["beams"][0]
            lines.append(
                f"| {LABELS[method]}, initial structure trained once | {m['budget']} | {b['beam']} "
                f"| {100 * b['recall']:.2f} | {b['users_per_s']:,.1f} | | |"
            )
        ev = m["eval"]
        one = ev["batch1"]
        for b in ev["beams"]:
            single = f"{one['users_per_s']:,.1f}" if b["beam"] == one["beam"] else ""
            cand = "" if b.get("candidates") is None else f"{b['candidates']:,.0f}"
            beam = "exact" if method == "two_tower" else b["beam"]
            lines.append(
                f"| {LABELS[method]} | {m['budget']} | {beam} | {100 * b['recall']:.2f} "
                f"| {b['users_per_s']:,.1f} | {single} | {cand} |"
            )
        for label, ann in (m.get("ann") or {}).items():
            if not isinstance(ann, dict) or "points" not in ann:
                continue
            knob = "efSearch" if label == "hnsw" else "nprobe"
            for p in ann["points"]:
                lines.append(
                    f"| two-tower FAISS {label.upper()} (build {ann['build_s']:,.0f} s) | {m['budget']} "
                    f"| {knob} {p['param']} | {100 * p['recall']:.2f} | {p['users_per_s']:,.1f} "
                    f"| {p['batch1_users_per_s']:,.1f} | |"
                )
    return lines


def markdown(result: dict) -> str:
    m = result["machine"]
    head = [
        f"# Catalogue scale: {result['items']:,} items, {result['users']:,} users (`benchmarks.large`)",
        "",
        f"Machine: {m['cpu_count']} cores ({m['cpu_model']}), torch {m['torch']} with {m['torch_threads']} "
        f"threads, GPU {m['gpu'] or 'none'}; load average {m['load_average_before']} before, "
        f"{result.get('load_average_after')} after. Command: `{result['command']}`. Every step in its own "
        f"process: seconds and peak RSS are the step's own (the split's windows included).",
        "",
        "## Steps",
        "",
    ]
    body = ["", f"## Retrieval: {result['test_users']:,} test users, recall@{result['k']} with seen items kept", ""]
    return "\n".join(head + steps_table(result) + body + quality_table(result)) + "\n"


def plot(result: dict, path: str) -> None:
    """recall@k against users/s (batch 256, log scale): one curve per index over its beams, the
    FAISS indexes over their parameter, the exact two-tower as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for method, m in result["methods"].items():
        pts = m["eval"]["beams"]
        style = "k*" if method == "two_tower" else "o-"
        ax.plot(
            [p["users_per_s"] for p in pts],
            [100 * p["recall"] for p in pts],
            style,
            label=LABELS[method],
            markersize=10 if method == "two_tower" else 5,
        )
        for label, ann in (m.get("ann") or {}).items():
            if isinstance(ann, dict) and "points" in ann:
                ax.plot(
                    [p["users_per_s"] for p in ann["points"]],
                    [100 * p["recall"] for p in ann["points"]],
                    "s--",
                    label=f"two-tower FAISS {label.upper()}",
                )
    ax.set_xscale("log")
    ax.set_xlabel("users per second (CPU, batch 256)")
    ax.set_ylabel(f"Recall@{result['k']} (%)")
    ax.set_title(f"{result['items']:,} synthetic items: recall against speed")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
