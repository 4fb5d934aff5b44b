"""Export and import of an index (`grove export`, `grove import-index`): every method's version
round-trips into another store with the same structure, weights and top-k; the TorchScript
scorer gives grove's top-k; the README's outside-grove TDM search agrees with grove's, and so does
a RecForest search run with the exported modules only; bad folders are refused with the store
unchanged."""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from grove.flows.cli import main
from grove.flows.index_export import export_index, import_index
from grove.indexstore.store import Store
from grove.models import lifecycle
from grove.models.retriever import Retriever

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()

TINY = {
    "tdm": {"dim": 8, "hidden": [16, 8], "max_samples": 1500, "device": "cpu"},
    "jtm": {"dim": 8, "hidden": [16, 8], "max_samples": 1500, "tree_samples": 1500, "gap": 3, "device": "cpu"},
    "deforec": {"dim": 8, "negatives": 5, "max_samples": 1500, "tree_samples": 1500, "device": "cpu"},
    "recforest": {
        "arity": 8,
        "trees": 2,
        "hidden": 16,
        "heads": 2,
        "ff": 32,
        "epochs": 1,
        "max_steps": 5,
        "embeddings": "svd",
        "device": "cpu",
    },
    "dr": {"arity": 8, "depth": 2, "n_paths": 2, "dim": 8, "hidden": 16, "epochs": 1, "max_samples": 1500},
    "two_tower": {"epochs": 1, "dim": 8, "hidden": [16], "max_steps": 20, "device": "cpu"},
    "itemcf": {"device": "cpu"},
}
SEED = 3


@pytest.fixture(scope="module")
def stores(make_synth_store):
    """A source store with one trained version per method, and a second store holding the same
    dataset and split (generated with the same seed: same items, same numbering)."""
    src = make_synth_store("export-src", n_items=300, n_users=400, seed=SEED)
    dst = make_synth_store("export-dst", n_items=300, n_users=400, seed=SEED)
    store = Store.open(src)
    versions = {}
    for method, config in TINY.items():
        built = lifecycle.construct(store, f"x-{method}", lifecycle.Recipe.new(method, config), "synth")
        versions[method] = lifecycle.train(store, built.id).id
    return src, dst, versions


def histories(store: Store, n: int = 24) -> list[list[str]]:
    data = store.load_split("synth", "default")
    raw = store.item_raw_ids("synth")
    return [[str(raw[i]) for i in h[h >= 0][::-1]] for h in data.valid.histories[:n]]


@pytest.mark.parametrize("method", sorted(TINY))
def test_every_method_round_trips_into_another_store(stores, tmp_path, method):
    src_url, dst_url, versions = stores
    src, dst = Store.open(src_url), Store.open(dst_url)
    vid = versions[method]
    out = export_index(src, f"x-{method}", tmp_path / "exp", version=vid)
    manifest = json.loads((out.folder / "manifest.json").read_text())
    assert manifest["version"] == vid and manifest["method"] == method
    for name, entry in manifest["files"].items():  # every file listed with its digest
        assert (out.folder / name).stat().st_size == entry["bytes"] and len(entry["sha256"]) == 64
    assert ("scorer.pt" in manifest["files"]) == (method in ("tdm", "jtm"))
    assert (
        ("user_tower.pt" in manifest["files"])
        == ("item_vectors.parquet" in manifest["files"])
        == (method == "two_tower")
    )
    assert any(re.fullmatch(r"scorer_\d+\.pt", name) for name in manifest["files"]) == (method == "deforec")
    assert ("encoder.pt" in manifest["files"]) == (method in ("dr", "recforest"))
    assert (
        ("leaf_scorer_0.pt" in manifest["files"])
        == ("decoder_0_step_0.pt" in manifest["files"])
        == (method == "recforest")
    )
    scripted = ("tdm", "jtm", "deforec", "dr", "recforest", "two_tower")
    assert (out.scripted is not None) == (method in scripted) == (manifest["scorer"] is not None)
    raw = pq.read_table(out.folder / "items.parquet").column("raw").to_pylist()
    assert raw == [str(r) for r in src.item_raw_ids("synth")]

    new = import_index(dst, out.folder)
    info, structure, artifacts = dst.read_version(new)
    old_info, old_structure, old_artifacts = src.read_version(vid)
    assert info.index_name == f"x-{method}" and info.method == method and info.config == old_info.config
    assert structure.equals(old_structure) and artifacts == old_artifacts
    hist = histories(src)
    want = Retriever.load(src, f"x-{method}", version=vid, device="cpu").retrieve_raw(hist, 10, 20)
    got = Retriever.load(dst, f"x-{method}", version=new, device="cpu").retrieve_raw(hist, 10, 20)
    assert got.items == want.items
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)


def test_readme_snippet_serves_an_exported_tdm_tree_like_grove(stores, tmp_path):
    src_url, _, versions = stores
    src = Store.open(src_url)
    out = export_index(src, "x-tdm", tmp_path / "tdm", version=versions["tdm"])
    code = re.search(r"## Export.*?```python\n(.*?)```", README, re.S).group(1)
    space: dict = {}
    exec(compile(code, "README.md (Export)", "exec"), space)
    index = space["load"](str(out.folder))
    hist = histories(src)
    want = Retriever.load(src, "x-tdm", version=versions["tdm"], device="cpu").retrieve_raw(hist, 10, 20)
    got = [space["retrieve"](index, h, k=10, beam=20) for h in hist]
    # same beam search, same scorer: the lists agree; float sums of a differently shaped call may
    # swap a near-tie, so the check is on the sets, and on the order for almost every user
    overlap = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want.items)])
    assert overlap >= 0.98, overlap
    assert np.mean([g == w for g, w in zip(got, want.items)]) >= 0.9


def test_two_tower_export_serves_by_inner_product(stores, tmp_path):
    """The exported user tower and item vectors give the version's exact top-k without grove."""
    import torch

    src_url, _, versions = stores
    src = Store.open(src_url)
    out = export_index(src, "x-two_tower", tmp_path / "tt", version=versions["two_tower"])
    tower = torch.jit.load(str(out.folder / "user_tower.pt"))
    table = pq.read_table(out.folder / "item_vectors.parquet")
    vectors = torch.tensor(np.asarray(table.column("vector").to_pylist(), dtype=np.float32))
    raw = table.column("raw").to_pylist()
    data = src.load_split("synth", "default")
    hist = torch.as_tensor(data.valid.histories[:24]).long()
    with torch.no_grad():
        top = (tower(hist) @ vectors.T).topk(10, dim=1).indices.tolist()
    want = Retriever.load(src, "x-two_tower", version=versions["two_tower"], device="cpu").retrieve_raw(
        histories(src), 10, 20
    )
    assert [[raw[i] for i in row] for row in top] == want.items


def recforest_outside_grove(folder: pathlib.Path, histories, k: int, beam: int) -> tuple[list, list]:
    """RecForest's search (appendix Algorithm 4) with the exported TorchScript modules and Parquet
    files only, as the manifest describes it: a cached beam search in every tree, the union of the
    items found, ranked by sum_t log p_t(item) (log-sum-exp over the item's leaves; a leaf the beam
    reached keeps its beam log-prob, the others are teacher-forced). Returns the k best dense item
    ids and their scores per user."""
    import torch

    arity = json.loads((folder / "manifest.json").read_text())["arity"]
    table = pq.read_table(folder / "item_paths.parquet").to_pydict()
    n_trees = max(table["tree"]) + 1
    leaf_item: list[dict] = [{} for _ in range(n_trees)]  # leaf path -> item
    item_leaves: list[dict] = [{} for _ in range(n_trees)]  # item -> its leaf paths
    for t, item, path in zip(table["tree"], table["item"], table["path"]):
        leaf_item[t][tuple(path)] = item
        item_leaves[t].setdefault(item, []).append(path)

    def load(name: str) -> torch.jit.ScriptModule:
        return torch.jit.load(str(folder / name))

    u = histories.shape[0]
    rows = torch.arange(u)[:, None]
    with torch.no_grad():
        mem_k, mem_v, bias = load("encoder.pt")(histories)
        beams = []  # per tree, per user: {leaf path: log-prob}
        for t in range(n_trees):
            codes, scores, cache = torch.zeros(u, 1, 0, dtype=torch.long), torch.zeros(u, 1), ()
            for level in range(len(next(iter(leaf_item[t])))):
                step = load(f"decoder_{t}_step_{level}.pt")
                last = (codes[:, :, -1],) if level else ()
                logp, *cache = step(mem_k[t], mem_v[t], bias, *last, *cache)  # (U, P, K), 2 x (layers, U, P, ...)
                cand = (scores[:, :, None] + logp).reshape(u, -1)
                scores, idx = cand.topk(min(beam, cand.shape[1]), dim=1)
                parent = idx // arity
                codes = torch.cat([codes[rows, parent], (idx % arity)[:, :, None]], dim=2)
                cache = [c[:, rows, parent] for c in cache]  # the kept prefixes' keys and values
            beams.append([dict(zip(map(tuple, c.tolist()), s.tolist())) for c, s in zip(codes, scores)])
        scorers = [load(f"leaf_scorer_{t}.pt") for t in range(n_trees)]
        best, best_scores = [], []
        for i in range(u):
            items = sorted({leaf_item[t][path] for t in range(n_trees) for path in beams[t][i]})
            total = torch.zeros(len(items))
            for t in range(n_trees):
                paths = torch.tensor([p for item in items for p in item_leaves[t][item]])  # (P, H)
                logp = scorers[t](mem_k[t][:, i : i + 1], mem_v[t][:, i : i + 1], bias[i : i + 1], paths[None])[0]
                teacher = logp.gather(-1, paths[..., None]).squeeze(-1).sum(-1).tolist()  # (P,) log p_t(leaf)
                leaf = [beams[t][i].get(tuple(p), lp) for p, lp in zip(paths.tolist(), teacher)]
                n = [len(item_leaves[t][item]) for item in items]
                total += torch.stack([x.logsumexp(0) for x in torch.tensor(leaf).split(n)])
            top = total.topk(k)
            best.append([items[j] for j in top.indices.tolist()])
            best_scores.append(top.values.tolist())
    return best, best_scores


def test_recforest_export_serves_outside_grove_like_grove(stores, tmp_path):
    """The exported RecForest modules, loaded with torch.jit.load, and the Parquet structure give
    the stored version's top-k without grove; the manifest says how to call every module."""
    import torch

    src_url, _, versions = stores
    src = Store.open(src_url)
    out = export_index(src, "x-recforest", tmp_path / "rf", version=versions["recforest"])
    manifest = json.loads((out.folder / "manifest.json").read_text())
    doc = manifest["scorer"]
    depth = len(pq.read_table(out.folder / "item_paths.parquet").column("path")[0].as_py())  # complete trees
    for key in ("encoder", "decoder_t_step_l", "leaf_scorer_t", "call", "returns"):
        assert doc[key], key
    assert "mem_k, mem_v, bias = encoder(histories)" in doc["encoder"]
    assert "decoder_t_step_l(mem_k[t], mem_v[t], bias, last_codes, cache_k, cache_v)" in doc["decoder_t_step_l"]
    assert "leaf_scorer_t(mem_k[t], mem_v[t], bias, paths)" in doc["leaf_scorer_t"]
    want_files = {"encoder.pt"} | {f"leaf_scorer_{t}.pt" for t in range(2)}
    want_files |= {f"decoder_{t}_step_{level}.pt" for t in range(2) for level in range(depth)}
    assert set(doc["files"]) == want_files and want_files <= set(manifest["files"])

    dense = torch.as_tensor(src.load_split("synth", "default").valid.histories[:24]).long()
    got, scores = recforest_outside_grove(out.folder, dense, k=10, beam=20)
    want = Retriever.load(src, "x-recforest", version=versions["recforest"], device="cpu").retrieve_raw(
        histories(src), 10, 20
    )
    raw = pq.read_table(out.folder / "items.parquet").column("raw").to_pylist()
    # the same k items with the same score at every rank: the same ranking, but for items whose
    # scores tie (two float32 sums of this tiny model do, and a tie may come in either order)
    assert [{raw[i] for i in row} for row in got] == [set(row) for row in want.items]
    np.testing.assert_allclose(scores, want.scores, rtol=1e-5)


@pytest.mark.parametrize("leaf_scoring", ["teacher", "expand"])
def test_recforest_modules_stand_in_for_either_leaf_scoring(stores, leaf_scoring):
    """The candidates' leaves the beams missed are scored by teacher forcing or by expanding the
    tree with the cached steps: the traced modules give grove's top-k either way (else `script`
    refuses)."""
    from grove.flows.index_export import _check_histories
    from grove.models.scripted import script

    src_url, _, versions = stores
    store = Store.open(src_url)
    info = store.version(versions["recforest"])
    searcher = lifecycle.searcher(lifecycle.load(store, info.id), "cpu")
    searcher.leaf_scoring = leaf_scoring
    made = script(searcher, _check_histories(info.shape), 10, 20)
    assert made is not None and made.kind == "encoder, decoder steps and leaf scorers"


def test_cli_export_and_import(stores, tmp_path, capsys):
    src_url, dst_url, versions = stores
    vid = versions["jtm"]
    folder = tmp_path / "jtm"
    assert main(["--store", src_url, "export", f"x-jtm@{vid}", str(folder)]) == 0
    assert "TorchScript: tree node scorer" in capsys.readouterr().out
    assert main(["import-index", str(folder), "--index", "copied", "--store", dst_url]) == 0
    out = capsys.readouterr().out
    new = int(re.search(r"wrote version (\d+)", out).group(1))
    assert Store.open(dst_url).version(new).index_name == "copied"


def _list_file(folder: pathlib.Path, name: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _versions(url: str) -> int:
    return len(Store.open(url).list_versions())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "nodes.parquet").write_bytes(b"x" * 10), "nodes.parquet: SHA-256 differs"),
        (lambda d: (d / "artifacts" / "weights.pt").unlink(), "weights.pt: listed in the manifest but missing"),
        (lambda d: (d / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json: no such file (not a grove export)"),
        (lambda d: _list_file(d, "../../etc/passwd"), "file name '../../etc/passwd' is not inside the export"),
    ],
)
def test_a_damaged_export_is_refused_and_the_store_unchanged(stores, tmp_path, capsys, damage, message):
    src_url, dst_url, versions = stores
    out = export_index(Store.open(src_url), "x-tdm", tmp_path / "exp", version=versions["tdm"])
    damage(out.folder)
    before = _versions(dst_url)
    assert main(["--store", dst_url, "import-index", str(out.folder)]) == 2
    assert message in capsys.readouterr().err
    assert _versions(dst_url) == before


def test_other_items_or_a_missing_split_are_refused(stores, make_synth_store, tmp_path, capsys):
    src_url, _, versions = stores
    out = export_index(Store.open(src_url), "x-dr", tmp_path / "exp", version=versions["dr"])
    other = make_synth_store("export-other", n_items=310, n_users=400, seed=SEED)  # 310 items, not 300
    before = _versions(other)
    assert main(["--store", other, "import-index", str(out.folder)]) == 2
    assert "numbers its items differently from the export" in capsys.readouterr().err
    manifest = json.loads((out.folder / "manifest.json").read_text())
    manifest["split"] = "nosuch"
    (out.folder / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--store", other, "import-index", str(out.folder)]) == 2
    assert "grove data split synth --split nosuch" in capsys.readouterr().err
    assert _versions(other) == before


def test_export_refuses_an_existing_folder_and_leaves_no_partial(stores, tmp_path, capsys):
    src_url, _, versions = stores
    (tmp_path / "taken").mkdir()
    assert main(["--store", src_url, "export", "x-tdm", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--store", src_url, "export", "x-tdm@abc", str(tmp_path / "new")]) == 2
    assert "expected INDEX or INDEX@VERSION" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    shutil.rmtree(tmp_path / "taken")
