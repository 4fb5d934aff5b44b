"""`grove demo`: the main job on the embedded default store.

1. creates or upgrades the store schema (`grove init`);
2. brings a dataset: a synthetic one with a planted hierarchy of interests by default, or the
   file given with ``--data`` (any format `grove data import` reads; ``--categories`` adds item categories);
3. splits it with the evaluation protocol (once; reused on later runs);
4. runs the learning cycle of ``--method`` (default TDM: category tree -> train -> evaluate ->
   k-means relearn -> train -> evaluate) through Prefect, each step a new version;
5. prints what the store holds and the metrics table of every evaluated version.

Re-running appends new versions to the same index; nothing is overwritten.
"""

from __future__ import annotations

import pathlib

from grove.flows.cli.common import (
    beam_sizes,
    cutoffs,
    format_table,
    gate_newest,
    is_local,
    parse_settings,
    print_metrics,
)
from grove.models.registry import method_names

DEMO_SPLIT = "default"
# Small enough for a 2-core CPU in a few minutes, large enough that the tree matters. The
# paper's network scores every (behaviour, node) pair, so on 2 CPU cores the demo trains on a
# 12,000-window sample per round; batches of 64 at lr 3e-3 give that sample enough Adam steps
# (the paper's 256 / 1e-3 learns far less in the same time).
DEMO_CONFIG = {
    "tdm": {"epochs": 1, "max_samples": 12000, "neg_base": 1.0, "batch_size": 64, "lr": 3e-3},
    "jtm": {"epochs": 1, "max_samples": 12000, "neg_base": 1.0, "batch_size": 64, "lr": 3e-3, "tree_samples": 12000},
}


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: data -> split -> learning cycle -> metrics")
    p.add_argument("--data", help="interactions file to import instead of synthetic data")
    p.add_argument("--categories", metavar="FILE", help="item categories file (e.g. MovieLens movies.dat)")
    p.add_argument("--name", help="dataset name (default: from the file name, or demo-synth)")
    p.add_argument("--method", default="tdm", choices=method_names(), help="the method of the cycle")
    p.add_argument("--rounds", type=int, default=1, help="relearn rounds after the first training")
    p.add_argument("--synth-items", type=int, default=1000, metavar="N", help="items of the synthetic dataset")
    p.add_argument("--synth-users", type=int, default=2000, metavar="N", help="users of the synthetic dataset")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the method")
    p.add_argument("--config", help="method config as a JSON object")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="one config field (repeatable)")
    p.add_argument("--k", type=cutoffs, default=(10, 50), help="cut-offs, e.g. 10,50")
    p.add_argument("--beam", type=beam_sizes, default=(50,), help="beam sizes, e.g. 20,50,100")
    p.add_argument("--users", type=int, default=None, help="evaluate on the first N valid users")
    p.add_argument("--local", action="store_true", help="run the cycle without Prefect")
    p.set_defaults(func=cmd_demo)


def _ensure_dataset(store, args) -> str:
    from grove.flows.datasets import import_file, split_dataset, synth_dataset

    if args.data:
        name = args.name or pathlib.Path(args.data).name.split(".")[0]
    else:
        name = args.name or "demo-synth"
    known = {d.name for d in store.list_datasets()}
    if name not in known:
        if args.data:
            info = import_file(store, args.data, name, items=args.categories, seed=args.seed)
        else:
            info = synth_dataset(store, name, args.synth_items, args.synth_users, args.seed)
        print(f"dataset {name!r}: {info.n_interactions:,} interactions, {info.n_users:,} users, {info.n_items:,} items")
    else:
        print(f"dataset {name!r} already in the store; reusing it")
    if DEMO_SPLIT not in {s.name for s in store.list_splits(name)}:
        split = split_dataset(store, name, DEMO_SPLIT, seed=args.seed)
        print(f"split {DEMO_SPLIT!r}: {split.n_train:,} train / {split.n_valid:,} valid / {split.n_test:,} test users")
    return name


def cmd_demo(args) -> int:
    from grove.flows.cycle import run_cycle
    from grove.indexstore.store import Store

    url = Store.init(args.store)
    store = Store.open(url)
    print(f"store: {url}")
    dataset = _ensure_dataset(store, args)
    config = dict(DEMO_CONFIG.get(args.method, {}))
    config.update(parse_settings(args.config, args.set))
    index = f"{dataset}-{args.method}"
    versions = run_cycle(
        url,
        index,
        args.method,
        dataset,
        DEMO_SPLIT,
        config,
        args.rounds,
        args.k,
        args.beam,
        args.users,
        local=is_local(args),
    )
    print(f"\nindex {index!r}: wrote versions {', '.join(map(str, versions))}\n")
    print("the store holds:")
    rows = [(v.id, v.method, v.kind, v.parent_id, v.note or "") for v in store.list_versions(index)]
    print(format_table(["version", "method", "kind", "parent", "note"], rows))
    print_metrics(store, versions)
    decision = gate_newest(store, index, versions, args.k, args.beam, args.users)
    print(f"\ngate: {decision.reason}")
    print(f"aliases of {index!r}: {store.aliases(index)}")
    print(f"\ninspect: grove versions list {index}; grove retrieve {index} --history <ids> --k 10")
    return 0
