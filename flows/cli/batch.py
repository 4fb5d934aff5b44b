"""The batch options of ``grove retrieve`` and ``grove eval`` (`grove.flows.batch_retrieve`).

``grove retrieve INDEX [--version V | --alias A] --users-file FILE.parquet | --split NAME [--role R]
--out RECS.parquet [--k K --beam B --exclude-seen --batch-size N] [--ray [ADDRESS] --actors N
--threads T]`` writes (user, rank, item, score) rows for every user; ``grove eval ... --ray
[ADDRESS] --actors N`` searches the held-out users on a Ray actor pool. Without ``--users-file`` /
``--split`` ``grove retrieve`` answers the one ``--history`` as before.
"""

from __future__ import annotations

import argparse
import json
import sys

from grove.flows.cli.common import newest_version, open_store, positive
from grove.indexstore.errors import GroveError

RAY_HELP = (
    "run on Ray: no value starts a local Ray, ADDRESS joins a cluster (auto, HOST:6379, "
    "ray://HOST:10001); the store (and --users-file) must be readable from every node"
)


def add_ray_opts(p) -> None:
    """``--ray [ADDRESS]``, ``--actors N``, ``--threads T``."""
    from grove.flows.ray_pool import LOCAL

    p.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS", help=RAY_HELP)
    p.add_argument(
        "--actors", type=positive, default=None, help="Ray actors, each loading the version once (default 1)"
    )
    p.add_argument(
        "--threads", type=positive, default=None, help="torch threads per Ray actor (default 1), or of this process"
    )


def add_retrieve_opts(p: argparse.ArgumentParser) -> None:
    """The batch job's options of ``grove retrieve``."""
    g = p.add_argument_group("batch job: many users -> one parquet file of (user, rank, item, score)")
    g.add_argument("--users-file", metavar="FILE.parquet", help="columns user and history (raw item ids, oldest first)")
    g.add_argument("--split", metavar="NAME", help="the held-out users of this split of the version's dataset")
    g.add_argument("--role", choices=("valid", "test"), default="valid", help="which held-out users of --split")
    g.add_argument("--out", metavar="FILE.parquet", help="the output file (written whole or not at all)")
    g.add_argument("--batch-size", type=positive, default=256, help="users per search call (default 256)")
    add_ray_opts(g)


def is_batch(args) -> bool:
    """Whether ``grove retrieve`` runs the batch job (any of its options given)."""
    return any(getattr(args, a, None) is not None for a in ("users_file", "split", "out", "ray", "actors"))


def ray_options(args):
    """The `grove.flows.ray_pool.RayOptions` of ``--ray/--actors/--threads``, or None without --ray."""
    from grove.flows.ray_pool import LOCAL, RayOptions

    if args.ray is None:
        if args.actors is not None:
            raise GroveError("--actors sizes a Ray actor pool: add --ray")
        return None
    address = None if args.ray == LOCAL else args.ray
    return RayOptions(address, args.actors or 1, args.threads or 1)


def cmd_batch_retrieve(args) -> int:
    from grove.flows.batch_retrieve import retrieve_to_file
    from grove.models.batch_retrieval import Query

    if args.history:
        raise GroveError("--history is one user's history; --users-file / --split give many")
    if (args.users_file is None) == (args.split is None):
        raise GroveError(
            "a batch retrieval takes its users from --users-file FILE.parquet or --split NAME (one of them)"
        )
    if args.out is None:
        raise GroveError("a batch retrieval writes its rows to --out FILE.parquet")
    ray = ray_options(args)
    store = open_store(args)
    res = retrieve_to_file(
        store,
        args.index,
        args.out,
        users=args.users_file,
        split=args.split,
        role=args.role,
        version=args.version,
        alias=args.alias,
        query=Query(args.k, args.beam, args.exclude_seen),
        batch_size=args.batch_size,
        device=args.device,
        threads=None if ray else args.threads,
        ray=ray,
    )
    if res.unknown:
        print(f"warning: {res.unknown} unknown item id(s) ignored", file=sys.stderr)
    if args.json:
        print(json.dumps({**res.__dict__, "users_per_second": res.users_per_second}))
    else:
        print(
            f"wrote {res.rows:,} rows for {res.users:,} users to {res.out} (index {args.index!r} version "
            f"{res.version}, k={args.k}, beam={args.beam}) in {res.seconds:.1f} s, {res.users_per_second:,.1f} users/s"
        )
    return 0


def cmd_eval_ray(args) -> int:
    """``grove eval --ray``: the evaluation's searches on a Ray actor pool, metrics stored."""
    from grove.flows.batch_retrieve import evaluate_on_ray
    from grove.flows.report_table import metrics_table

    if getattr(args, "task_runner", None) is not None:
        raise GroveError("--ray runs the evaluation's searches on Ray actors; --task-runner runs Prefect tasks")
    ray = ray_options(args)
    if ray is None:
        raise GroveError("--actors and --threads size a Ray actor pool: add --ray")
    store = open_store(args)
    vid = newest_version(store, args.index, args.version)
    rows = evaluate_on_ray(
        store, vid, ray, args.role, args.k, args.beam, args.users, args.exhaustive, args.exhaustive_users
    )
    print(f"version {vid} on the {args.role} users ({ray.describe()}):")
    print(metrics_table(rows))
    return 0
