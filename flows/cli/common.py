"""What the ``grove`` commands share: argument types, config settings, the store, tables.

Every command module imports these from here (no private imports across command modules).
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from grove.indexstore.errors import GroveError


def ints(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive integers, e.g. ``10,50``."""
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _checked_ints(text: str, check) -> tuple[int, ...]:
    """`ints`, then ``check`` (a `grove.models.limits` bound) before anything is loaded."""
    vals = ints(text)
    try:
        check(vals)
    except GroveError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return vals


def cutoffs(text: str) -> tuple[int, ...]:
    """argparse type of an evaluation's ``--k``: `ints`, each at most `grove.models.limits.MAX_K`."""
    from grove.models.limits import check_evaluation

    return _checked_ints(text, lambda ks: check_evaluation(ks, ()))


def beam_sizes(text: str) -> tuple[int, ...]:
    """argparse type of an evaluation's ``--beam``: `ints`, each at most `grove.models.limits.MAX_BEAM`."""
    from grove.models.limits import check_beam

    return _checked_ints(text, lambda beams: [check_beam(b) for b in beams])


def one_int(text: str) -> int:
    """argparse type of ``--k``/``--beam`` where a command takes one value: the list syntax of
    `ints` (so the options read alike everywhere) holding exactly one positive integer."""
    vals = ints(text)
    if len(vals) != 1:
        raise argparse.ArgumentTypeError(f"this command takes one value, got {text!r}")
    return vals[0]


def positive(text: str) -> int:
    """argparse type: one positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_precision_opts(p: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--compile`` of the commands that search a loaded version."""
    p.add_argument(
        "--precision",
        default=None,
        help="compute precision of the search: fp32 (the default), bf16 or fp16; scores are returned as float32",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="level",
        default=None,
        metavar="MODE",
        help="torch.compile the search (TDM and JTM; the first searches compile): level (each level's scoring, "
        "the default MODE) or search (the whole search, CUDA graphs on CUDA; one graph per power-of-two batch)",
    )


def parse_settings(config_json: str | None, settings: list[str] | None) -> dict:
    """``--config '{"epochs": 2}'`` merged with ``--set epochs=2 --set arity=4`` (JSON values)."""
    values: dict = {}
    if config_json:
        try:
            parsed = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise GroveError(f"--config is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise GroveError("--config must be a JSON object")
        values.update(parsed)
    for item in settings or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise GroveError(f"--set expects key=value, got {item!r}")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def is_local(args) -> bool:
    """``--local`` or GROVE_LOCAL=1: run the steps in-process, without Prefect."""
    return bool(getattr(args, "local", False)) or os.environ.get("GROVE_LOCAL") == "1"


def open_store(args):
    """The store of ``--store`` (or $GROVE_STORE, or the default), schema checked."""
    from grove.indexstore.store import Store

    return Store.open(args.store)


def newest_version(store, index: str, version: int | None) -> int:
    """An explicit version of the index, or its newest version (`Store.resolve`)."""
    return store.resolve(index, version=version, prefer=None).id


def cell(v) -> str:
    """A value as a table cell: empty for None, 4 significant digits for floats, dates to seconds."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if hasattr(v, "isoformat"):
        return v.isoformat(sep=" ", timespec="seconds")
    return str(v)


def format_table(columns: list[str], rows: list) -> str:
    """Columns aligned with two spaces; numbers right-aligned."""
    cells = [[cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r[i], (int, float, np.integer, np.floating)) or r[i] is None for r in rows) and rows
        for i in range(len(columns))
    ]

    def fmt(vals) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, numeric)).rstrip()

    return "\n".join([fmt(columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def add_runner_opts(p: argparse.ArgumentParser) -> None:
    """``--task-runner thread|ray|dask [--runner-address ADDR] [--workers N]`` (`grove.flows.runners`)."""
    from grove.flows.runners import RUNNERS

    g = p.add_argument_group("task runner (independent steps at once; Prefect runs only)")
    g.add_argument(
        "--task-runner",
        choices=RUNNERS,
        default=None,
        help="run the flow's tasks on threads, Ray (prefect-ray) or Dask (prefect-dask); default: one after the other",
    )
    g.add_argument(
        "--runner-address",
        default=None,
        metavar="ADDR",
        help="an existing cluster: ray://HEAD:10001 (or auto), tcp://SCHEDULER:8786; default: start a local one",
    )
    g.add_argument("--workers", type=positive, default=None, help="size of the local Ray / Dask cluster or thread pool")


def runner_spec(args):
    """The `grove.flows.runners.RunnerSpec` of the options, or None; a GroveError for options that
    contradict each other (a runner with --local, an address without a runner...)."""
    from grove.flows.runners import RunnerSpec

    kind = getattr(args, "task_runner", None)
    if kind is None:
        if getattr(args, "runner_address", None) is not None or getattr(args, "workers", None) is not None:
            raise GroveError("--runner-address and --workers need --task-runner")
        return None
    if is_local(args):
        raise GroveError(f"--task-runner {kind} runs Prefect tasks; --local runs the steps without Prefect")
    return RunnerSpec(kind, args.runner_address, args.workers)


def print_metrics(store, versions: list[int]) -> None:
    """The metrics table of every evaluated version of ``versions``, in order."""
    from grove.flows.report_table import metrics_table

    for vid in versions:
        rows = [r.__dict__ if not isinstance(r, dict) else r for r in store.metrics(vid)]
        if rows:
            print(f"\nmetrics of version {vid} ({store.version(vid).note}), valid users:")
            print(metrics_table(rows))


def gate_newest(store, index: str, versions: list[int], ks, beams, max_users: int | None):
    """The promotion gate (`grove.flows.gate`) on the last of ``versions``: ``production`` moves
    to it when its recall@k (the first k, at beam 50 when evaluated, else the first beam) is no
    worse than production's; production's missing metric is evaluated first. Returns the
    `GateDecision` (the alias log records it)."""
    from grove.flows import steps
    from grove.flows.gate import GateConfig, run_gate

    gate = GateConfig(k=ks[0], beam=50 if 50 in beams else beams[0])

    def evaluate(vid: int):
        return steps.evaluate(store.url, vid, gate.role, (gate.k,), (gate.beam,), max_users)

    return run_gate(store, index, versions[-1], gate, evaluate=evaluate, publish=False)
