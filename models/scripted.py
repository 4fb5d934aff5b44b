"""A version's model as TorchScript, for serving an exported index outside grove
(``grove export``). Histories are (U, 69) int64 dense item ids, nearest first, -1 padded.

* TDM and JTM: ``scorer.pt`` is the node scorer traced on CPU, ``scores = scorer(histories,
  nodes)`` with nodes (U, C) int64 tree node ids -> (U, C) float logits (higher is better). Beam
  search over ``nodes.parquet`` with it is TDM's Algorithm 1 (README, "Export"). JTM's
  behaviours are mapped to each node's level inside the module.
* DeFoRec (with its default discriminator): ``scorer_R.pt`` per trained tree R of
  ``nodes.parquet``, each called as TDM's; the paper's search runs a beam in every tree, takes
  the union of the items reached, and ranks it by the last tree's scorer at each item's leaf.
* Deep Retrieval: ``encoder.pt`` (histories -> u (U, dim)), ``layer_d.pt`` for d = 0..D-1
  ((N, dim) u, (N, d) codes of the layers above -> (N, K) log-probabilities of layer d),
  ``rerank.pt`` ((U, dim) u, (U, C) items -> (U, C) logits): beam search over the D x K grid,
  the items of the paths found (``item_paths.parquet``), ranked by the rerank logits.
* The two-tower: ``user_tower.pt``, ``vectors = tower(histories)`` -> (U, d), and the item
  vectors (n_items, d) (written as ``item_vectors.parquet``): the top-k by inner product is the
  version's search, and the vectors go to any nearest-neighbour library.

`script` checks what it traced before anything is written: driven by the traced module, grove's
own search must return the version's top-k items on the histories given. Other methods
(RecForest, DeFoRec with the two-tower discriminator, item-CF) have no scripted model yet (`scripted_kind`
returns None and the export says so); their structure and weights are exported and
``grove import-index`` reads them back.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from grove.indexstore.errors import GroveError
from grove.indexstore.samples import MAX_BEHAVIOURS
from grove.models.baselines.two_tower import TwoTowerModel, TwoTowerSearcher
from grove.models.beam_search import beam_search
from grove.models.deforec.method import DeFoRecSearcher, scorer_discriminator
from grove.models.dr.method import DRSearcher
from grove.models.dr.network import GRUEncoder, SoftmaxHead, StructureModel
from grove.models.dr.search import beam_search as path_beam_search
from grove.models.method import Searcher
from grove.models.node_scorer import TDMScorer
from grove.models.topk import ranked
from grove.models.tree_method import TreeSearcher

SCORER, USER_TOWER = "scorer.pt", "user_tower.pt"


@dataclass(frozen=True)
class Scripted:
    """What `script` made: TorchScript files by name, the item vectors (two-tower) or None,
    and a description of how to call the module (kept in the export's manifest)."""

    files: dict[str, bytes]
    item_vectors: np.ndarray | None
    doc: dict


class _TreeScorer(nn.Module):
    """``forward(histories (U, 69), nodes (U, C)) -> (U, C)`` logits without the scorer's
    data-dependent shortcuts (padding trim, JTM's one-level fast path), so a trace holds for
    every input shape."""

    def __init__(self, scorer: TDMScorer):
        super().__init__()
        self.scorer = scorer

    def forward(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        s = self.scorer
        per_node = getattr(s, "behaviour_rows_per_node", None)
        beh = per_node(histories, nodes) if per_node is not None else s.behaviour_rows(histories, nodes)
        return s.forward_rows(beh, s.node_rows(nodes))


class _UserTower(nn.Module):
    """``forward(histories (U, 69)) -> (U, d)`` user vectors of a two-tower model."""

    def __init__(self, model: TwoTowerModel):
        super().__init__()
        self.model = model

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        return self.model.user(histories)


def scripted_kind(searcher: Searcher) -> str | None:
    """What `script` exports for this searcher, or None."""
    if isinstance(searcher, TreeSearcher):
        return "tree node scorer"
    if isinstance(searcher, TwoTowerSearcher):
        return "user tower and item vectors"
    if isinstance(searcher, DeFoRecSearcher) and searcher.discriminator == "last_scorer":
        return "node scorer per tree"
    if isinstance(searcher, DRSearcher):
        return "encoder, layer heads and rerank"
    return None


def script(searcher: Searcher, histories: torch.Tensor, k: int, beam: int) -> Scripted:
    """The searcher's model as TorchScript (CPU), checked on ``histories`` (B, 69)."""
    hist = histories.cpu().long()
    if isinstance(searcher, TreeSearcher):
        module = _TreeScorer(searcher.scorer.cpu().eval())
        nodes = torch.arange(1, min(searcher.tree.n_nodes, 4), dtype=torch.long).repeat(2, 1)
        traced = _trace(module, (_example_histories(searcher.n_items), nodes))
        _check_tree(searcher, traced, hist, k, beam)
        doc = {
            "call": "scores = scorer(histories, nodes)",
            "nodes": "(U, C) int64 node ids of nodes.parquet",
            "returns": "(U, C) float32 logits, higher is better",
        }
        return Scripted({SCORER: _save(traced)}, None, doc)
    if isinstance(searcher, DeFoRecSearcher) and searcher.discriminator == "last_scorer":
        return _script_forest(searcher, hist, k, beam)
    if isinstance(searcher, DRSearcher):
        return _script_dr(searcher, hist, k, beam)
    if isinstance(searcher, TwoTowerSearcher):
        traced = _trace(_UserTower(searcher.model.cpu().eval()), (_example_histories(searcher.n_items),))
        vectors = searcher.items.cpu().numpy().astype(np.float32)
        with torch.inference_mode():
            _, want = searcher.search(hist, k, beam)
            got = (traced(hist) @ torch.from_numpy(vectors).T).topk(k, dim=1).indices
        _same(want, got, k)
        doc = {
            "call": "vectors = tower(histories); scores = vectors @ item_vectors.T",
            "returns": "(U, d) float32 user vectors; the k best items have the largest inner products",
        }
        return Scripted({USER_TOWER: _save(traced)}, vectors, doc)
    raise GroveError("only TDM, JTM and two-tower versions have a scripted model")


class _Traced:
    """A traced node scorer where grove's DeFoRec search expects a `TDMScorer` (``.score``)."""

    def __init__(self, module: torch.jit.ScriptModule):
        self.module = module

    def score(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        return self.module(histories, nodes)


def _script_forest(searcher: DeFoRecSearcher, hist: torch.Tensor, k: int, beam: int) -> Scripted:
    files: dict[str, bytes] = {}
    traced: list[Any] = []  # `_Traced` stand-ins for the trees' TDMScorers
    for tree, scorer in zip(searcher.trees, searcher.scorers):
        nodes = torch.arange(1, min(tree.n_nodes, 4), dtype=torch.long).repeat(2, 1)
        module = _trace(_TreeScorer(scorer.cpu().eval()), (_example_histories(searcher.n_items), nodes))
        files[f"scorer_{searcher.rounds[len(traced)]}.pt"] = _save(module)
        traced.append(_Traced(module))
    twin = DeFoRecSearcher(
        searcher.trees,
        traced,
        scorer_discriminator(traced[-1], searcher.trees[-1]),  # duck-typed: it calls .score
        searcher.n_items,
        torch.device("cpu"),
        searcher.rounds,
        searcher.discriminator,
    )
    with torch.inference_mode():
        _, want = searcher.search(hist, k, beam)
        _, got = twin.search(hist, k, beam)
    _same(want, got, k)
    doc = {
        "call": "scores = scorer_R(histories, nodes) for tree R; beam search in every tree, union of the "
        "items, ranked by the last tree's scorer at each item's leaf",
        "nodes": "(U, C) int64 node ids of tree R in nodes.parquet",
        "returns": "(U, C) float32 logits, higher is better",
    }
    return Scripted(files, None, doc)


class _Encoder(nn.Module):
    """DR's GRU encoder over the whole (U, 69) width (`GRUEncoder.forward_full_width`)."""

    def __init__(self, encoder: GRUEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, histories: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_full_width(histories)


class _Layer(nn.Module):
    """Layer ``d`` of DR's structure model: log p(c_d | u, c_<d)."""

    def __init__(self, structure: StructureModel):
        super().__init__()
        self.structure = structure

    def forward(self, u: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        return self.structure.layer_log_probs(u, prefix)


class _Rerank(nn.Module):
    def __init__(self, head: SoftmaxHead):
        super().__init__()
        self.head = head

    def forward(self, u: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.head.score_items(u, items)


class _TracedLayers:
    """Traced layer heads where grove's path beam search expects a `StructureModel`."""

    def __init__(self, layers: list, arity: int):
        self.layers, self.arity, self.depth = layers, arity, len(layers)

    def layer_log_probs(self, u: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        return self.layers[prefix.shape[-1]](u, prefix)


def _script_dr(searcher: DRSearcher, hist: torch.Tensor, k: int, beam: int) -> Scripted:
    net = searcher.net.cpu().eval()
    structure = net.structure
    example = _example_histories(searcher.n_items)
    encoder = _trace(_Encoder(net.encoder), (example,))
    u = torch.randn(2, 3, structure.dim)
    layers = [_trace(_Layer(structure), (u, torch.zeros(2, 3, d, dtype=torch.long))) for d in range(structure.depth)]
    rerank = _trace(_Rerank(net.softmax), (u[:, 0], torch.zeros(2, 3, dtype=torch.long)))
    with torch.inference_mode():
        _, want = searcher.search(hist, k, beam)
        user = encoder(hist)
        paths, _ = path_beam_search(_TracedLayers(layers, structure.arity), user, beam)  # type: ignore[arg-type]
        cands = searcher.index.items_of(paths)
        _, got = ranked(rerank(user, cands.clamp_min(0)), cands, k)
    _same(want, got, k)
    files = {"encoder.pt": _save(encoder), "rerank.pt": _save(rerank)}
    files.update({f"layer_{d}.pt": _save(layer) for d, layer in enumerate(layers)})
    doc = {
        "call": "u = encoder(histories); beam search over layers: logp = layer_d(u, codes of layers < d); "
        "items of the paths found (item_paths.parquet); scores = rerank(u, items)",
        "returns": "u (U, dim); layer_d (N, K) log-probabilities; rerank (U, C) logits, higher is better",
    }
    return Scripted(files, None, doc)


def _trace(module: nn.Module, example: tuple) -> torch.jit.ScriptModule:
    with torch.inference_mode(), warnings.catch_warnings():
        # F.embedding's padding_idx check is a constant of the module, not of the input
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
    return torch.jit.load(io.BytesIO(_save(traced)))  # what a reader of the file gets


def _save(module: torch.jit.ScriptModule) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    return buf.getvalue()


def _example_histories(n_items: int) -> torch.Tensor:
    """(2, 69): one full history and one short one (the padding path traced too)."""
    gen = np.random.default_rng(0)
    full = gen.integers(0, n_items, MAX_BEHAVIOURS)
    short = np.full(MAX_BEHAVIOURS, -1)
    short[:3] = full[:3]
    return torch.as_tensor(np.stack([full, short]), dtype=torch.long)


def _check_tree(searcher: TreeSearcher, traced: torch.jit.ScriptModule, hist: torch.Tensor, k: int, beam: int) -> None:
    b = hist.shape[0]

    def score(rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        grid = nodes.view(b, -1)
        grid = torch.where(grid == 0, grid.max(), grid)  # as `TreeSearcher` pads
        return traced(hist, grid).reshape(-1)

    with torch.inference_mode():
        _, want = searcher.search(hist, k, beam)
        _, got = beam_search(searcher.tt, score, b, k, beam)
    _same(want, got, k)


def _same(want: torch.Tensor, got: torch.Tensor, k: int) -> None:
    same = (want.cpu() == got.cpu()).all(dim=1)
    if not bool(same.all()):
        bad = int((~same).nonzero()[0])
        raise GroveError(
            f"the traced model's top-{k} differs from the version's for history {bad} of {len(same)}: export refused"
        )
