"""Store commands of ``grove``: init, data, versions, alias, rollback, sql.

    grove init
    grove data import PATH --name NAME [--format F] [--user-col C ...] [--categories FILE] [--seed S]
    grove data split NAME [--split default] [--seed S] [--min-positives 10] ...
    grove data synth --name NAME --items N --users U --seed S
    grove data list | grove data show NAME
    grove versions list [INDEX] | show V | diff V1 V2
    grove alias set INDEX ALIAS V [--reason R] | grove alias log INDEX [--alias A]
    grove rollback INDEX [--alias production] [--to V] [--reason R]
    grove sql "QUERY"

Handlers open the store with `Store.open` (which refuses a schema that is behind) and print
plain aligned tables.
"""

from __future__ import annotations

import json

import numpy as np

from grove.flows.cli.common import cell, format_table, open_store

FORMATS = ("auto", "csv", "tsv", "parquet", "ml-dat", "ml-udata", "ml-100k", "ml-csv", "ml-latest")


# -------------------------------------------------------------------------------- commands
def cmd_init(args) -> int:
    from grove.indexstore.store import Store

    url = Store.init(args.store)
    print(f"store {url} is at schema {Store.open(url).check_schema()}")
    return 0


def cmd_data_import(args) -> int:
    from grove.flows.datasets import import_file

    info = import_file(
        open_store(args),
        args.path,
        args.name,
        fmt=args.format,
        items=args.categories,
        seed=args.seed,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        rating_col=args.rating_col,
        behavior_col=args.behavior_col,
    )
    print(
        f"dataset {info.name!r}: {info.n_interactions:,} interactions, {info.n_users:,} users, {info.n_items:,} items"
    )
    return 0


def cmd_data_synth(args) -> int:
    from grove.flows.datasets import synth_dataset

    info = synth_dataset(open_store(args), args.name, args.items, args.users, args.seed)
    print(
        f"dataset {info.name!r}: {info.n_interactions:,} interactions, {info.n_users:,} users, {info.n_items:,} items"
    )
    return 0


def cmd_data_split(args) -> int:
    from grove.flows.datasets import split_dataset

    positive = None if args.positive_rating < 0 else args.positive_rating
    info = split_dataset(
        open_store(args),
        args.name,
        args.split,
        seed=args.seed,
        min_positives=args.min_positives,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        positive_rating=positive,
    )
    print(
        f"split {info.name!r} of {info.dataset!r}: {info.n_train:,} train / {info.n_valid:,} valid / "
        f"{info.n_test:,} test users"
    )
    return 0


def cmd_data_list(args) -> int:
    store = open_store(args)
    rows = [
        (
            d.name,
            d.source,
            d.n_users,
            d.n_items,
            d.n_interactions,
            ", ".join(s.name for s in store.list_splits(d.name)),
            d.created_at,
        )
        for d in store.list_datasets()
    ]
    print(format_table(["name", "source", "users", "items", "interactions", "splits", "created"], rows))
    return 0


def _summary(x: np.ndarray) -> str:
    q = np.percentile(x, [0, 50, 90, 100]) if x.size else [0, 0, 0, 0]
    return f"min {q[0]:g}, median {q[1]:g}, p90 {q[2]:g}, max {q[3]:g}, mean {x.mean() if x.size else 0:.2f}"


def cmd_data_show(args) -> int:
    store = open_store(args)
    info = store.dataset(args.name)
    inter = store.load_interactions(args.name)
    codes, names = store.item_categories(args.name)
    print(f"dataset {info.name!r} from {info.source} (created {cell(info.created_at)})")
    print(f"  {info.n_interactions:,} interactions, {info.n_users:,} users, {info.n_items:,} items")
    print(f"  interactions per user: {_summary(np.bincount(inter.user, minlength=info.n_users))}")
    print(f"  interactions per item: {_summary(np.bincount(inter.item, minlength=info.n_items))}")
    print(f"  time: {int(inter.ts.min())} .. {int(inter.ts.max())}")
    if inter.rating is not None:
        vals, counts = np.unique(inter.rating, return_counts=True)
        top = ", ".join(f"{v:g}: {c:,}" for v, c in list(zip(vals, counts))[:12])
        print(f"  ratings: {top}")
    if inter.behavior is not None:
        vals, counts = np.unique(inter.behavior.astype(str), return_counts=True)
        print("  behaviours: " + ", ".join(f"{v}: {c:,}" for v, c in zip(vals[:12], counts[:12])))
    if names.size:
        per = np.bincount(codes[codes >= 0], minlength=names.size)
        order = np.argsort(-per, kind="stable")[:10]
        print(
            f"  {names.size} categories ({int((codes < 0).sum())} items without); top: "
            + ", ".join(f"{names[i]}: {per[i]:,}" for i in order)
        )
    splits = store.list_splits(args.name)
    if splits:
        print(
            format_table(
                ["split", "train", "valid", "test", "config"],
                [(s.name, s.n_train, s.n_valid, s.n_test, json.dumps(s.config)) for s in splits],
            )
        )
    return 0


def cmd_versions_list(args) -> int:
    store = open_store(args)
    alias_of: dict[int, list[str]] = {}
    for name, *_ in store.list_indexes():
        for alias, vid in store.aliases(name).items():
            alias_of.setdefault(vid, []).append(alias)
    rows = [
        (
            v.id,
            v.index_name,
            v.method,
            v.kind,
            v.parent_id,
            v.dataset,
            v.split,
            v.shape.get("n_items"),
            v.shape.get("total_nodes"),
            ", ".join(sorted(alias_of.get(v.id, []))),
            v.created_at,
            v.note,
        )
        for v in store.list_versions(args.index)
    ]
    print(
        format_table(
            [
                "id",
                "index",
                "method",
                "kind",
                "parent",
                "dataset",
                "split",
                "items",
                "nodes",
                "aliases",
                "created",
                "note",
            ],
            rows,
        )
    )
    return 0


def _level_rows(structure) -> tuple[list[str], list]:
    from grove.indexstore.structures import Forest, PathCodes

    if isinstance(structure, PathCodes):
        used = np.unique(structure.path_ids()).size
        sizes = np.bincount(np.unique(structure.path_ids(), return_inverse=True)[1].ravel())
        return (
            ["J", "D", "K", "used paths", "empty share", "top path size"],
            [
                (
                    structure.n_paths,
                    structure.depth,
                    structure.arity,
                    used,
                    1 - used / float(structure.arity) ** structure.depth,
                    int(sizes.max()),
                )
            ],
        )
    trees = structure.trees if isinstance(structure, Forest) else (structure,)
    rows = []
    for t, tree in enumerate(trees):
        counts = tree.level_counts()
        leaves = np.bincount(tree.level[tree.leaves], minlength=counts.size)
        rows += [(t, lv, int(c), int(lf)) for lv, (c, lf) in enumerate(zip(counts, leaves))]
    return ["tree", "level", "nodes", "leaves"], rows


def cmd_versions_show(args) -> int:
    store = open_store(args)
    info, structure, artifacts = store.read_version(args.version)
    print(
        f"version {info.id} of index {info.index_name!r}: {info.method} {info.kind}, status {info.status}, "
        f"created {cell(info.created_at)}"
    )
    print(f"  dataset {info.dataset} split {info.split} parent {info.parent_id} note {info.note or ''}")
    print(f"  config: {json.dumps(info.config, sort_keys=True)}")
    print(f"  shape: {json.dumps(info.shape)}")
    print("  artifacts: " + (", ".join(f"{k} ({len(v):,} bytes)" for k, v in artifacts.items()) or "none"))
    print("  lineage: " + " <- ".join(f"v{v.id} ({v.note or v.method})" for v in store.lineage(info.id)))
    print(format_table(*_level_rows(structure)))
    metrics = store.metrics(info.id)
    if metrics:
        print(
            format_table(
                ["role", "name", "k", "value", "beam", "filtered", "recorded"],
                [(m.role, m.name, m.k, m.value, m.beam, m.filtered, m.recorded_at) for m in metrics],
            )
        )
    return 0


def cmd_versions_diff(args) -> int:
    store = open_store(args)
    d = store.diff(args.v1, args.v2)
    dataset = store.version(d.v2).dataset
    raw = store.item_ids(dataset).raw_of if dataset else (lambda ids: ids)  # the ids a person knows
    print(f"diff of version {d.v1} -> {d.v2} ({d.kind})")
    rows = [
        (p.part, p.n_items, p.n_moved, " ".join(f"{a:.3f}" for a in p.agreement), " ".join(map(str, raw(p.sample))))
        for p in d.parts
    ]
    print(format_table(["part", "items", "moved", "agreement per level (0..D)", "moved items (sample)"], rows))
    return 0


def cmd_alias_set(args) -> int:
    e = open_store(args).set_alias(args.index, args.alias, args.version, args.reason)
    print(f"{e.index_name}@{e.alias}: {e.from_version} -> {e.to_version} ({e.action})")
    return 0


def cmd_alias_log(args) -> int:
    events = open_store(args).alias_history(args.index, args.alias)
    print(
        format_table(
            ["id", "at", "alias", "action", "from", "to", "reason"],
            [(e.id, e.at, e.alias, e.action, e.from_version, e.to_version, e.reason) for e in events],
        )
    )
    return 0


def cmd_rollback(args) -> int:
    e = open_store(args).rollback(args.index, args.alias, args.to, args.reason)
    print(f"{e.index_name}@{e.alias}: rolled back {e.from_version} -> {e.to_version}")
    return 0


def cmd_versions_write_staged(args) -> int:
    info = open_store(args).write_staged(args.file)
    print(f"wrote version {info.id} of index {info.index_name!r} ({info.note}) from {args.file}")
    return 0


def cmd_sql(args) -> int:
    store = open_store(args)
    columns, rows = store.query(args.query, timeout=args.timeout)
    if columns:
        print(format_table(columns, rows))
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return 0


# ------------------------------------------------------------------------------- register
def _data_parsers(sub) -> None:
    data = sub.add_parser("data", help="import, synthesise, split and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser(
        "import",
        help="stream an interactions file into a new dataset",
        description="Stream an interactions file into a new dataset through DuckDB; "
        "its memory is capped by $GROVE_IMPORT_MEMORY (default 2GB), beyond which "
        "it spills to <store file>.tmp.",
    )
    p.add_argument("path", help="interactions file: MovieLens ratings.dat, CSV, TSV or Parquet")
    p.add_argument("--name", required=True, help="name of the new dataset")
    p.add_argument("--format", default="auto", choices=FORMATS, help="file format ('auto': from the name)")
    for col in ("user", "item", "time", "rating", "behavior"):
        p.add_argument(f"--{col}-col", default=None, help=f"name of the {col} column")
    p.add_argument("--categories", metavar="FILE", help="item categories file (MovieLens movies.dat / movies.csv)")
    p.add_argument("--seed", type=int, default=0, help="seed for the one category kept per item")
    p.set_defaults(func=cmd_data_import)
    p = dsub.add_parser("split", help="user-disjoint train/valid/test split (docs/PROTOCOL.md)")
    p.add_argument("name", help="the dataset")
    p.add_argument("--split", default="default", help="name of the split")
    p.add_argument("--seed", type=int, default=0, help="seed of the user draw")
    p.add_argument("--min-positives", type=int, default=10, help="users with fewer positives are dropped")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="fraction of users held out for validation")
    p.add_argument("--test-fraction", type=float, default=0.1, help="fraction of users held out for test")
    p.add_argument(
        "--positive-rating",
        type=float,
        default=4.0,
        help="rating of a positive (negative: every interaction is positive)",
    )
    p.set_defaults(func=cmd_data_split)
    p = dsub.add_parser("synth", help="generate interactions with a planted hierarchy of interests")
    p.add_argument("--name", required=True, help="name of the new dataset")
    p.add_argument("--items", type=int, required=True, metavar="N", help="number of items")
    p.add_argument("--users", type=int, required=True, metavar="N", help="number of users")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator")
    p.set_defaults(func=cmd_data_synth)
    dsub.add_parser("list", help="datasets in the store").set_defaults(func=cmd_data_list)
    p = dsub.add_parser("show", help="counts and distributions of a dataset")
    p.add_argument("name", help="the dataset")
    p.set_defaults(func=cmd_data_show)


def register(sub) -> None:
    """Add the store commands to the ``grove`` subparsers."""
    sub.add_parser("init", help="create or upgrade the store schema").set_defaults(func=cmd_init)
    _data_parsers(sub)
    ver = sub.add_parser("versions", help="list, show and compare index versions")
    vsub = ver.add_subparsers(dest="versions_command", metavar="ACTION", required=True)
    p = vsub.add_parser("list", help="versions (of one index)")
    p.add_argument("index", nargs="?", default=None, help="only this index (default: every index)")
    p.set_defaults(func=cmd_versions_list)
    p = vsub.add_parser("show", help="config, counts per level, lineage and metrics of a version")
    p.add_argument("version", type=int, help="version id")
    p.set_defaults(func=cmd_versions_show)
    p = vsub.add_parser("diff", help="items whose leaf/path changed, agreement per level")
    p.add_argument("v1", type=int, help="the older version id")
    p.add_argument("v2", type=int, help="the newer version id")
    p.set_defaults(func=cmd_versions_diff)
    p = vsub.add_parser("write-staged", help="write a version a step saved while the store was locked")
    p.add_argument("file", help="the .npz file the step named")
    p.set_defaults(func=cmd_versions_write_staged)
    al = sub.add_parser("alias", help="move an alias (logged) or show the alias log")
    asub = al.add_subparsers(dest="alias_command", metavar="ACTION", required=True)
    p = asub.add_parser("set", help="point INDEX's ALIAS at version V")
    p.add_argument("index", help="the index")
    p.add_argument("alias", help="alias name, e.g. production")
    p.add_argument("version", type=int, help="version id the alias will point at")
    p.add_argument("--reason", default=None, help="why, kept in the alias log")
    p.set_defaults(func=cmd_alias_set)
    p = asub.add_parser("log", help="alias events of an index, oldest first")
    p.add_argument("index", help="the index")
    p.add_argument("--alias", default=None, help="only this alias (default: every alias)")
    p.set_defaults(func=cmd_alias_log)
    p = sub.add_parser("rollback", help="move an alias back (default: to the version before)")
    p.add_argument("index", help="the index")
    p.add_argument("--alias", default="production", help="the alias to move back")
    p.add_argument("--to", type=int, default=None, metavar="V", help="version to move to (default: the one before)")
    p.add_argument("--reason", default=None, help="why, kept in the alias log")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("sql", help="run one read-only SELECT/WITH/DESCRIBE/SHOW/EXPLAIN over this store")
    p.add_argument("query", help="one read-only SQL statement over the store's tables and views")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before the query is stopped")
    p.set_defaults(func=cmd_sql)
