"""Joining quality results: the aggregate over seeds, `merge_results` (one run's seeds that ran
apart) and `combine_results` (runs of different methods or budgets in one table)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from benchmarks.quality.report import speed_runs


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and (sample) std over seeds of every numeric field, per model label, in run order."""
    order, groups = [], {}
    for r in rows:
        if r["model"] not in groups:
            order.append(r["model"])
            groups[r["model"]] = []
        groups[r["model"]].append(r)
    out = []
    for label in order:
        g = groups[label]
        agg = {"model": label, "method": g[0]["method"], "seeds": [r["seed"] for r in g]}
        keys = [k for k in g[0] if k not in ("model", "method", "seed")]
        for k in keys:
            vals = [r[k] for r in g if isinstance(r.get(k), (int, float)) and r.get(k) is not None]
            if not vals:
                continue
            agg[k] = {
                "mean": float(np.mean(vals)),
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "n": len(vals),
            }
        out.append(agg)
    return out


MERGE_MUST_MATCH = ("dataset", "quick", "configs", "lifecycle")
MERGE_SETTINGS_MUST_MATCH = ("overrides", "beams", "ks", "test_users")


def read_matching(paths: list[pathlib.Path], keys: tuple, settings_keys: tuple) -> list[dict]:
    """The quality results at ``paths``; ValueError naming the file and field when one is not
    readable or differs from the first in a top-level ``keys`` or a ``settings_keys`` field."""
    res = []
    for path in paths:
        try:
            res.append(json.loads(pathlib.Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable quality result ({exc})") from exc
    first = res[0]
    for path, r in zip(paths[1:], res[1:]):
        for key in keys:
            if r.get(key) != first.get(key):
                raise ValueError(f"{path}: {key} differs from {paths[0]} ({r.get(key)!r} against {first.get(key)!r})")
        for key in settings_keys:
            if r["settings"].get(key) != first["settings"].get(key):
                raise ValueError(
                    f"{path}: settings.{key} {r['settings'].get(key)!r} differs from "
                    f"{first['settings'].get(key)!r} in {paths[0]}"
                )
    return res


def merge_results(paths: list[pathlib.Path]) -> dict:
    """One result from runs of the same dataset, configs and lifecycle whose seeds ran apart (in
    parallel, on two machines, or after a stop): rows, per-seed data and seconds joined, the
    aggregate recomputed. Raises ValueError naming the file and field when the runs differ in
    what they measured (dataset, configs, lifecycle, overrides, beams, ks, test users, methods)
    or when a seed comes twice."""
    res = read_matching(paths, MERGE_MUST_MATCH, MERGE_SETTINGS_MUST_MATCH + ("methods",))
    first = res[0]
    seeds = [s for r in res for s in r["settings"]["seeds_done"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed comes twice among {[str(p) for p in paths]}: seeds {seeds}")
    rows = [row for r in res for row in r["rows"]]
    asked = {s for r in res for s in r["settings"]["seeds"]}  # complete: every seed any run asked for is done
    return {
        **first,
        "command": " ; ".join(r["command"] for r in res),
        "complete": asked <= set(seeds),
        "merged_from": [str(p) for p in paths],
        "machines": [r["machine"] for r in res],
        "settings": {**first["settings"], "seeds": seeds, "seeds_done": seeds},
        "per_seed_data": [d for r in res for d in r["per_seed_data"]],
        "seconds": {"per_seed": {k: v for r in res for k, v in r["seconds"]["per_seed"].items()}},
        "errors": [e for r in res for e in r["errors"]],
        "aggregate": aggregate(rows),
        "rows": rows,
    }


COMBINE_MUST_MATCH = ("dataset", "quick")
COMBINE_SETTINGS_MUST_MATCH = ("beams", "ks", "test_users")
BASELINES = ("two_tower", "itemcf")  # rows that no lifecycle field changes


def method_budget(result: dict, method: str) -> str:
    """The ``--set`` overrides of ``method`` in a run, as ``field=value ...`` ('' = CONFIGS sizes)."""
    return " ".join(o.split(".", 1)[1] for o in result["settings"].get("overrides", []) if o.startswith(method + "."))


def combine_results(paths: list[pathlib.Path]) -> dict:
    """One table from runs of one dataset that measured different methods or budgets (issue 7.1's
    "one table" when the methods ran apart, as they must on a 2-core CPU).

    A row is keyed by its model label, its method's config and, for the indexes, the lifecycle.
    Rows of one key from several runs join their seeds (mean ± std over all of them). A (key,
    seed) that two runs both measured (the baselines that every run repeats, on the same split) is
    kept once, from the first run given; how far the repeat differs is recorded under
    ``repeats`` (recall@10/@50, exact), since thread counts can change a float reduction and so
    a tie in the ranking. A label that comes under two configs gets its method's overrides in
    brackets (``[full size]`` for none), as does every row of a method that ran with overrides.
    Raises ValueError naming the file and field when the runs differ in dataset, beams, ks or
    test users, or when one seed's split differs (its training windows, test users or items)."""
    res = read_matching(paths, COMBINE_MUST_MATCH, COMBINE_SETTINGS_MUST_MATCH)
    first = res[0]
    splits: dict[int, tuple[str, dict]] = {}  # seed -> (file, its data): one split per seed
    for path, r in zip(paths, res):
        for d in r.get("per_seed_data", []):
            data = {k: d.get(k) for k in ("train_windows", "test_users", "n_items")}
            seen = splits.setdefault(d["seed"], (str(path), data))
            if seen[1] != data:
                raise ValueError(f"{path}: seed {d['seed']}'s split {data} differs from {seen[1]} in {seen[0]}")

    def key_of(r: dict, row: dict) -> tuple:
        m = row["method"]
        life = None if m in BASELINES else json.dumps(r.get("lifecycle"), sort_keys=True)
        return row["model"], json.dumps(r["configs"].get(m), sort_keys=True, default=str), life

    labels: dict[str, set] = {}
    for r in res:
        for row in r["rows"]:
            labels.setdefault(row["model"], set()).add(key_of(r, row))
    rows, where, repeats, told = [], {}, [], {}
    for path, r in zip(paths, res):
        for row in r["rows"]:
            key = key_of(r, row)
            if (key, row["seed"]) in where:
                kept = where[(key, row["seed"])]
                diff = {
                    k: abs(row[k] - kept[k])
                    for k in ("recall@10/exact", "recall@50/exact")
                    if isinstance(row.get(k), (int, float)) and isinstance(kept.get(k), (int, float))
                }
                repeats.append({"model": row["model"], "seed": row["seed"], "file": str(path), "abs_diff": diff})
                continue
            out = dict(row)
            budget = method_budget(r, row["method"])
            if budget or len(labels[row["model"]]) > 1:
                out["model"] = f"{row['model']} [{budget or 'full size'}]"
            if told.setdefault(out["model"], key) != key:
                raise ValueError(
                    f"{path}: rows {out['model']!r} come under two configs or lifecycles "
                    f"that the same overrides name; combine those runs apart"
                )
            where[(key, row["seed"])] = out
            rows.append(out)
    seeds = sorted({row["seed"] for row in rows})
    return {
        **first,
        "command": "python -m benchmarks.quality --combine " + " ".join(map(str, paths)),
        "complete": all(r.get("complete") for r in res),
        "combined_from": [str(p) for p in paths],
        "machines": [r["machine"] for r in res],
        "runs": [
            {
                "file": str(p),
                "command": r["command"],
                "methods": r["settings"].get("methods"),
                "seeds": r["settings"].get("seeds_done", r["settings"].get("seeds")),
                "complete": r.get("complete", True),
                "overrides": r["settings"].get("overrides"),
                "configs": r.get("configs"),
                "lifecycle": r.get("lifecycle"),
                "speed_runs": speed_runs(r),
            }
            for p, r in zip(paths, res)
        ],
        "configs": None,
        "lifecycle": None,  # per run: see "runs"
        "settings": {
            **first["settings"],
            "seeds": seeds,
            "seeds_done": seeds,
            "overrides": [],
            "methods": sorted({row["method"] for row in rows}),
            "tag": "combined",
        },
        "per_seed_data": [{"seed": s, **splits[s][1]} for s in sorted(splits)],
        "seconds": {"per_run": [r.get("seconds") for r in res]},
        "errors": [e for r in res for e in r["errors"]],
        "repeats": repeats,
        "aggregate": aggregate(rows),
        "rows": rows,
    }
