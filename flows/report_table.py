"""Plain-text tables of metric rows for the terminal."""

from __future__ import annotations


def metrics_table(
    rows: list[dict], names=("precision", "recall", "f1", "ndcg", "ndcg_returned", "novelty", "fidelity")
) -> str:
    """One line per (beam, filtered, k) with a column per metric; values in percent."""
    groups: dict[tuple, dict[str, float]] = {}
    for r in rows:
        beam = "exhaustive" if r.get("beam") is None else str(r["beam"])
        key = (beam, bool(r.get("filtered")), int(r["k"]))
        groups.setdefault(key, {})[r["name"]] = float(r["value"])
    present = [n for n in names if any(n in g for g in groups.values())]
    header = ["beam", "seen", "k"] + present
    lines = [header]

    def order(key: tuple) -> tuple:  # beams by size, exhaustive last; kept before filtered; k ascending
        beam, filtered, k = key
        return (beam == "exhaustive", int(beam) if beam != "exhaustive" else 0, filtered, k)

    for (beam, filtered, k), vals in sorted(groups.items(), key=lambda kv: order(kv[0])):
        lines.append(
            [beam, "filtered" if filtered else "kept", str(k)]
            + [f"{100 * vals[n]:.2f}%" if n in vals else "" for n in present]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in lines)
