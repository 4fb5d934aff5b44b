"""One step of `benchmarks.large`, run in its own process so that its peak RSS is its own.

    python -m benchmarks.large_steps '<json spec>'

The spec names the step (``synth``, ``split``, ``construct``, ``train``, ``relearn``,
``evaluate``, ``ann``) and its arguments. The step runs through grove's public paths (the
flows' steps, the store, `Retriever.load`), and the last line on stdout is one JSON object:
the step's own figures plus ``seconds`` and ``peak_rss_gb`` (`resource.getrusage`, this
process only). Progress goes to stderr.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time

import numpy as np
import torch


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def synth(spec: dict) -> dict:
    from grove.flows.datasets import synth_dataset
    from grove.indexstore.store import Store

    Store.init(spec["url"])
    info = synth_dataset(Store.open(spec["url"]), spec["dataset"], spec["items"], spec["users"], spec["seed"])
    return {"interactions": info.n_interactions, "users": info.n_users, "items": info.n_items}


def split(spec: dict) -> dict:
    from grove.flows.datasets import split_dataset
    from grove.indexstore.store import Store

    info = split_dataset(Store.open(spec["url"]), spec["dataset"], "default", seed=spec["seed"])
    return {"train_users": info.n_train, "valid_users": info.n_valid, "test_users": info.n_test}


def construct(spec: dict) -> dict:
    from grove.flows import steps

    res = steps.construct(spec["url"], spec["index"], spec["method"], spec["config"], spec["dataset"])
    return {"version": res.version_id}


def train(spec: dict) -> dict:
    from grove.flows import steps

    return {"version": steps.train(spec["url"], spec["version"]).version_id}


def relearn(spec: dict) -> dict:
    from grove.flows import steps

    return {"version": steps.relearn(spec["url"], spec["version"]).version_id}


def _held_out(spec: dict):
    from grove.indexstore.store import Store
    from grove.models.lifecycle import Recipe, split_data

    store = Store.open(spec["url"])
    data = split_data(store, spec["dataset"], "default", Recipe.new(spec.get("method", "tdm")).config)
    return store, data.test.subset(spec["users"]), data.n_items


def evaluate(spec: dict) -> dict:
    """Load the version as a server would, then recall@k and users/s per beam (batch 256) and
    users/s at batch 1 (beam ``batch1_beam``)."""
    from grove.models.evaluation import evaluate as run
    from grove.models.retriever import Retriever

    store, held_out, _ = _held_out(spec)
    start = time.perf_counter()
    searcher = Retriever.load(store, spec["index"], version=spec["version"], device="cpu").searcher
    out = {"load_s": time.perf_counter() - start, "users": len(held_out), "beams": []}
    for beam in spec["beams"]:
        res = run(searcher, held_out, ks=(spec["k"],), beam=beam, batch_size=256, role="test")
        out["beams"].append(
            {
                "beam": beam,
                "recall": res.value("recall", spec["k"]),
                "users_per_s": res.users_per_second,
                "candidates": res.mean_candidates,
            }
        )
        print(
            f"  beam {beam}: recall@{spec['k']} {res.value('recall', spec['k']):.4f}, "
            f"{res.users_per_second:,.1f} users/s",
            file=sys.stderr,
            flush=True,
        )
    one = run(
        searcher,
        held_out.subset(spec["batch1_users"]),
        ks=(spec["k"],),
        beam=spec["batch1_beam"],
        batch_size=1,
        role="test",
    )
    out["batch1"] = {
        "beam": spec["batch1_beam"],
        "users": len(held_out.subset(spec["batch1_users"])),
        "users_per_s": one.users_per_second,
        "ms_per_user": 1000 / max(one.users_per_second, 1e-9),
    }
    return out


def ann(spec: dict) -> dict:
    """FAISS HNSW and IVF over a trained two-tower version's item vectors, queried with its user
    vectors: build seconds, recall@k and users/s at batch 256 and 1 per search parameter."""
    import faiss

    from grove.models.retriever import Retriever

    store, held_out, n = _held_out(spec)
    model = Retriever.load(store, spec["index"], version=spec["version"], device="cpu").searcher.model
    with torch.inference_mode():
        base = model.item_matrix().detach().float().numpy().astype(np.float32)
        users = model.user(torch.as_tensor(held_out.histories).long()).numpy().astype(np.float32)
    faiss.omp_set_num_threads(torch.get_num_threads())
    out = {}
    nlist = max(1, int(4 * math.sqrt(n)))
    builders = {
        "hnsw": lambda: faiss.IndexHNSWFlat(base.shape[1], 32, faiss.METRIC_INNER_PRODUCT),
        "ivf": lambda: faiss.IndexIVFFlat(
            faiss.IndexFlatIP(base.shape[1]), base.shape[1], nlist, faiss.METRIC_INNER_PRODUCT
        ),
    }
    for label, make in builders.items():
        start = time.perf_counter()
        index = make()
        if label == "ivf":
            index.train(base)
        index.add(base)
        rows = {"build_s": time.perf_counter() - start, "points": []}
        for value in spec["ef" if label == "hnsw" else "nprobe"]:
            if label == "hnsw":
                index.hnsw.efSearch = value
            else:
                index.nprobe = value
            rows["points"].append({"param": value, **_ann_point(index, users, held_out, spec)})
        out[label] = rows
    return out


def _ann_point(index, users: np.ndarray, held_out, spec: dict) -> dict:
    """recall@k and users/s at batch 256 over every user, users/s at batch 1 over the first few."""
    from grove.models.evaluation import recall_of

    k = spec["k"]
    start = time.perf_counter()
    found = np.concatenate([index.search(users[i : i + 256], k)[1] for i in range(0, users.shape[0], 256)])
    batch = users.shape[0] / (time.perf_counter() - start)
    one = users[: spec["batch1_users"]]
    start = time.perf_counter()
    for i in range(one.shape[0]):
        index.search(one[i : i + 1], k)
    single = one.shape[0] / (time.perf_counter() - start)
    return {"recall": recall_of(found, held_out, k), "users_per_s": batch, "batch1_users_per_s": single}


STEPS = {
    "synth": synth,
    "split": split,
    "construct": construct,
    "train": train,
    "relearn": relearn,
    "evaluate": evaluate,
    "ann": ann,
}


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    start = time.perf_counter()
    out = STEPS[spec["step"]](spec)
    out.update(seconds=time.perf_counter() - start, peak_rss_gb=_peak_gb())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main(sys.argv[1:])
    exit_quietly(0)
