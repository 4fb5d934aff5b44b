"""`grove build | train | relearn | eval | cycle | retrieve | demo`.

Learning commands run as Prefect flows (a temporary local Prefect server starts when no
PREFECT_API_URL is set); ``--local`` (or GROVE_LOCAL=1) runs the very same steps in-process
without Prefect. ``build``, ``eval`` and ``cycle`` take ``--task-runner thread|ray|dask``
(`grove.flows.runners`): independent steps (an evaluation beside the next step, the beams of an
evaluation, a RecForest's trees) then run at once on that runner. Every command prints the
version(s) it wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from grove.flows.cli import batch
from grove.flows.cli.common import (
    add_precision_opts,
    add_runner_opts,
    beam_sizes,
    cutoffs,
    format_table,
    gate_newest,
    is_local,
    newest_version,
    one_int,
    open_store,
    parse_settings,
    positive,
    print_metrics,
    runner_spec,
)
from grove.models.evaluation import EXHAUSTIVE_MAX_ITEMS
from grove.models.lifecycle import Recipe
from grove.models.registry import method_names

# a cycle evaluates several beams, so that its report draws recall against users/s as a curve
CYCLE_BEAMS = (20, 50, 100)


def _add_method_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help=f"one of: {', '.join(method_names())}")
    p.add_argument("--split", default="default", help="the dataset's split to train and evaluate on")
    p.add_argument("--config", help="method config as a JSON object (fields: grove config METHOD)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="one config field (repeatable)")


def _add_eval_opts(p: argparse.ArgumentParser, beams: tuple[int, ...] = (50,)) -> None:
    p.add_argument("--k", type=cutoffs, default=(10, 50), help="cut-offs, e.g. 10,50")
    p.add_argument("--beam", type=beam_sizes, default=beams, help="beam sizes, e.g. 20,50,100")
    p.add_argument("--users", type=positive, default=None, help="evaluate on the first N held-out users")


def register(sub) -> None:
    p = sub.add_parser("build", help="construct an initial index -> new version")
    p.add_argument("index", help="name of the index (a new one, or a new line of versions of it)")
    p.add_argument("--dataset", required=True, help="the dataset to build from")
    _add_method_opts(p)
    p.add_argument("--local", action="store_true", help="run without Prefect")
    add_runner_opts(p)
    p.set_defaults(func=cmd_build)

    for name, helptext, fn in (
        ("train", "train the model of a version -> new version", cmd_train),
        ("relearn", "relearn the index from a trained version -> new version", cmd_relearn),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("index", help="the index")
        p.add_argument("--version", type=int, help="default: the newest version of the index")
        p.add_argument("--local", action="store_true", help="run without Prefect")
        p.add_argument(
            "--nproc",
            type=positive,
            default=1,
            metavar="N",
            help="data-parallel workers on this machine (torch.distributed: gloo on CPU, NCCL on "
            "CUDA); for several machines run the command under torchrun instead",
        )
        p.set_defaults(func=fn)

    p = sub.add_parser("eval", help="evaluate a version on held-out users; metrics stored")
    p.add_argument("index", help="the index")
    p.add_argument("--version", type=int, help="default: the newest version of the index")
    p.add_argument("--role", choices=("valid", "test"), default="valid", help="which held-out users")
    _add_eval_opts(p)
    p.add_argument(
        "--exhaustive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also score every item with the same model (the fidelity reference); default: "
        f"on for catalogues of at most {EXHAUSTIVE_MAX_ITEMS:,} items, off above",
    )
    p.add_argument(
        "--exhaustive-users",
        type=positive,
        default=None,
        metavar="N",
        help="run the exhaustive reference on the first N evaluated users only (default: all)",
    )
    p.add_argument("--local", action="store_true", help="run without Prefect")
    add_runner_opts(p)
    batch.add_ray_opts(p.add_argument_group("the searches on a Ray actor pool (no Prefect)"))
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("cycle", help="construct -> train -> evaluate -> N x (relearn, train, evaluate)")
    p.add_argument("index", help="name of the index")
    p.add_argument("--dataset", required=True, help="the dataset to learn from")
    _add_method_opts(p)
    p.add_argument("--rounds", type=int, default=1, help="relearn rounds after the first training")
    _add_eval_opts(p, beams=CYCLE_BEAMS)
    p.add_argument(
        "--promote",
        action="store_true",
        help="then run the promotion gate: production moves to the last version when its recall@k "
        "(the first --k, beam 50) is no worse",
    )
    p.add_argument("--local", action="store_true", help="run without Prefect")
    add_runner_opts(p)
    p.set_defaults(func=cmd_cycle)

    p = sub.add_parser("retrieve", help="top-k items for one history, or for many users into a parquet file")
    p.add_argument("index", help="the index")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--version", type=int, help="this version (default: production, else the newest)")
    g.add_argument("--alias", help="the version this alias points at")
    p.add_argument("--history", default="", help="raw item ids, oldest first, e.g. 12,7,33")
    p.add_argument("--k", type=one_int, default=10, help="items returned (one value)")
    p.add_argument("--beam", type=one_int, default=50, help="beam size (one value)")
    p.add_argument("--exclude-seen", action="store_true", help="drop items of the history from the results")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_precision_opts(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    batch.add_retrieve_opts(p)
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("config", help="a method's config fields: type, default and meaning (for --set / --config)")
    p.add_argument("method", choices=method_names(), help="the method")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_config)


# ------------------------------------------------------------------------------ handlers
def cmd_build(args) -> int:
    from grove.flows import steps

    runner = runner_spec(args)
    store = open_store(args)
    config = parse_settings(args.config, args.set)
    Recipe.new(args.method, config)  # refuse unknown fields before any flow starts
    store.split(args.dataset, args.split)
    if is_local(args):
        vid = steps.construct(store.url, args.index, args.method, config, args.dataset, args.split).version_id
    else:
        from grove.flows.prefect_flows import construct_flow
        from grove.flows.runners import with_task_runner

        flow = with_task_runner(construct_flow, runner)
        vid = flow(store.url, args.index, args.method, args.dataset, args.split, config, runner is not None)
    print(f"wrote version {vid} of index {args.index!r} ({args.method}, construct)")
    return 0


def _step_cmd(args, step: str) -> int:
    from grove.flows import steps
    from grove.models import distributed

    store = open_store(args)
    vid = newest_version(store, args.index, args.version)
    if distributed.launched():  # one worker of a torchrun job: no Prefect, rank 0 writes and reports
        from grove.flows.distributed_train import work

        new = work(store.url, vid, step)
        if new is None:
            return 0
    elif is_local(args):
        new = getattr(steps, step)(store.url, vid, nproc=args.nproc).version_id
    else:
        from grove.flows import prefect_flows as fl

        new = getattr(fl, f"{step}_flow")(store.url, vid, args.nproc)
    print(f"wrote version {new} of index {args.index!r} ({step} of version {vid})")
    return 0


def cmd_train(args) -> int:
    return _step_cmd(args, "train")


def cmd_relearn(args) -> int:
    return _step_cmd(args, "relearn")


def cmd_eval(args) -> int:
    from grove.flows import steps
    from grove.flows.report_table import metrics_table

    if args.ray is not None or args.actors is not None or args.threads is not None:
        return batch.cmd_eval_ray(args)
    runner = runner_spec(args)
    store = open_store(args)
    vid = newest_version(store, args.index, args.version)
    if is_local(args):
        rows = steps.evaluate(
            store.url,
            vid,
            args.role,
            args.k,
            args.beam,
            args.users,
            exhaustive=args.exhaustive,
            exhaustive_users=args.exhaustive_users,
        )
    else:
        from grove.flows.prefect_flows import evaluate_flow
        from grove.flows.runners import with_task_runner

        rows = with_task_runner(evaluate_flow, runner)(
            store.url,
            vid,
            args.role,
            args.k,
            args.beam,
            args.users,
            args.exhaustive,
            args.exhaustive_users,
            runner is not None,
        )
    print(f"version {vid} on the {args.role} users:")
    print(metrics_table(rows))
    return 0


def cmd_cycle(args) -> int:
    from grove.flows.cycle import run_cycle

    runner = runner_spec(args)
    store = open_store(args)
    config = parse_settings(args.config, args.set)
    if not is_local(args):  # refuse a bad config or split before a Prefect server starts
        Recipe.new(args.method, config)
        store.split(args.dataset, args.split)
    versions = run_cycle(
        store.url,
        args.index,
        args.method,
        args.dataset,
        args.split,
        config,
        args.rounds,
        args.k,
        args.beam,
        args.users,
        local=is_local(args),
        store=store,
        runner=runner,
    )
    print(f"wrote versions {', '.join(map(str, versions))} of index {args.index!r}")
    print_metrics(store, versions)
    if args.promote:
        decision = gate_newest(store, args.index, versions, args.k, args.beam, args.users)
        print(f"\ngate: {decision.reason}")
        print(f"aliases of {args.index!r}: {store.aliases(args.index)}")
    return 0


def cmd_retrieve(args) -> int:
    from grove.models.retriever import Retriever

    if batch.is_batch(args):
        return batch.cmd_batch_retrieve(args)
    store = open_store(args)
    history = [h.strip() for h in args.history.split(",") if h.strip()]
    retriever = Retriever.load(
        store,
        args.index,
        version=args.version,
        alias=args.alias,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
    )
    with warnings.catch_warnings():  # the unknown ids are reported once, below, as a CLI warning
        warnings.simplefilter("ignore", UserWarning)
        res = retriever.retrieve_raw([history], args.k, args.beam, exclude_seen=args.exclude_seen)
    if res.unknown:
        print(f"warning: {res.unknown} unknown item id(s) ignored", file=sys.stderr)
    pairs = [(i, float(s)) for i, s in zip(res.items[0], res.scores[0]) if i is not None]
    if args.json:
        print(
            json.dumps(
                {
                    "version": retriever.version.id,
                    "items": [p[0] for p in pairs],
                    "scores": [p[1] for p in pairs],
                    "unknown": res.unknown,
                }
            )
        )
    else:
        print(f"index {args.index!r} version {retriever.version.id}, k={args.k}, beam={args.beam}")
        print(
            format_table(
                ["rank", "item", "score"], [(rank, item, score) for rank, (item, score) in enumerate(pairs, 1)]
            )
        )
    return 0


def cmd_config(args) -> int:
    from grove.models.config_info import config_fields

    fields = config_fields(args.method)
    if args.json:
        print(json.dumps([{**f.__dict__, "default": f.default} for f in fields], default=list))
        return 0
    rows = [(f.name, f.type, json.dumps(f.default, default=list), f.doc) for f in fields]
    print(format_table(["field", "type", "default", "meaning"], rows))
    return 0
