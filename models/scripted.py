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
* RecForest: ``encoder.pt`` (histories -> every tree's cross-attention keys and values and the
  padding bias), per tree t ``decoder_t_step_l.pt`` for l = 0..H-1 (level l of the decoder with
  its key/value cache) and ``leaf_scorer_t.pt`` (teacher-forced log-probabilities of given leaf
  paths): Algorithm 4's cached beam search in every tree, the union of the items reached
  (``item_paths.parquet``) ranked by sum_t log p_t(item) (`RECFOREST_DOC` has the signatures).
  The history width trim and the attention split along the batch are scripted inside the traces
  (``torch.jit.script_if_tracing``), so the modules hold for every batch, beam and history length.
* The two-tower: ``user_tower.pt``, ``vectors = tower(histories)`` -> (U, d), and the item
  vectors (n_items, d) (written as ``item_vectors.parquet``): the top-k by inner product is the
  version's search, and the vectors go to any nearest-neighbour library.

`script` checks what it traced before anything is written: a copy of the version's searcher
with the traced modules in place of its networks must return the searcher's own top-k items on
the histories given. Other methods (DeFoRec with the two-tower discriminator, item-CF) have no
scripted model yet (`script` returns None and the export says so); their structure and weights
are exported and ``grove import-index`` reads them back.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from grove.indexstore.errors import GroveError
from grove.indexstore.samples import MAX_BEHAVIOURS
from grove.indexstore.structures import Tree
from grove.models.baselines.two_tower import TwoTowerSearcher
from grove.models.deforec.method import DeFoRecSearcher, scorer_discriminator
from grove.models.dr.method import DRSearcher
from grove.models.method import Searcher
from grove.models.node_scorer import TDMScorer
from grove.models.recforest.network import PathDecoder, RecForestNet
from grove.models.recforest.search import RecForestSearcher
from grove.models.tree_method import TreeSearcher

TREE_DOC = {"nodes": "(U, C) int64 node ids of nodes.parquet", "returns": "(U, C) float32 logits, higher is better"}


@dataclass(frozen=True)
class Scripted:
    """What `script` made: what it is, TorchScript files by name, the item vectors (two-tower)
    or None, and how to call the modules (kept in the export's manifest)."""

    kind: str
    files: dict[str, bytes]
    item_vectors: np.ndarray | None
    doc: dict


def script(searcher: Searcher, histories: torch.Tensor, k: int, beam: int) -> Scripted | None:
    """The searcher's networks as TorchScript (CPU), checked on ``histories`` (B, 69); None for
    a method without a scripted model."""
    hist = histories.cpu().long()
    if isinstance(searcher, TreeSearcher):
        return _script_tree(searcher, hist, k, beam)
    if isinstance(searcher, DeFoRecSearcher) and searcher.discriminator == "last_scorer":
        return _script_forest(searcher, hist, k, beam)
    if isinstance(searcher, DRSearcher):
        return _script_dr(searcher, hist, k, beam)
    if isinstance(searcher, TwoTowerSearcher):
        return _script_two_tower(searcher, hist, k, beam)
    if isinstance(searcher, RecForestSearcher):
        return _script_recforest(searcher, hist, k, beam)
    return None


class _Method(nn.Module):
    """A module whose ``forward`` is one method of a network (``forward_static`` of a node
    scorer, ``user`` of a two-tower...): what is traced and saved."""

    def __init__(self, net: nn.Module, method: str):
        super().__init__()
        self.net, self.method = net, method

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.net, self.method)(*inputs)


# ------------------------------------------------------------------------------ trees
class _Traced:
    """A traced node scorer where grove's tree searches call a `TDMScorer` (``.score``)."""

    def __init__(self, module: torch.jit.ScriptModule):
        self.module = module

    def forward_trimmed(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        return self.module(histories, nodes)

    def score(self, histories: torch.Tensor, nodes: torch.Tensor, forward=None) -> torch.Tensor:
        return (forward or self.module)(histories, nodes)


def _trace_scorer(scorer: TDMScorer, tree: Tree, n_items: int) -> torch.jit.ScriptModule:
    nodes = torch.arange(1, min(tree.n_nodes, 4), dtype=torch.long).repeat(2, 1)
    # forward_static: no padding trim or JTM fast path, so the trace holds for every shape
    return _trace(_Method(scorer.cpu().eval(), "forward_static"), (_example_histories(n_items), nodes))


def _script_tree(searcher: TreeSearcher, hist: torch.Tensor, k: int, beam: int) -> Scripted:
    traced = _trace_scorer(searcher.scorer, searcher.tree, searcher.n_items)
    twin = copy.copy(searcher)
    twin.scorer = _Traced(traced)  # type: ignore[assignment]
    _check(searcher, twin, hist, k, beam)
    doc = {"call": "scores = scorer(histories, nodes)", **TREE_DOC}
    return Scripted("tree node scorer", {"scorer.pt": _save(traced)}, None, doc)


def _script_forest(searcher: DeFoRecSearcher, hist: torch.Tensor, k: int, beam: int) -> Scripted:
    traced = [_trace_scorer(s, t, searcher.n_items) for t, s in zip(searcher.trees, searcher.scorers)]
    twin = copy.copy(searcher)
    twin.scorers = [_Traced(m) for m in traced]
    twin.discriminate = scorer_discriminator(twin.scorers[-1], searcher.trees[-1])
    _check(searcher, twin, hist, k, beam)
    doc = {
        "call": "scores = scorer_R(histories, nodes) for tree R; beam search in every tree, union of the "
        "items, ranked by the last tree's scorer at each item's leaf",
        **TREE_DOC,
    }
    files = {f"scorer_{r}.pt": _save(m) for r, m in zip(searcher.rounds, traced)}
    return Scripted("node scorer per tree", files, None, doc)


# ------------------------------------------------------------------------------ Deep Retrieval
class _TracedLayers:
    """Traced layer heads where grove's path beam search calls a `StructureModel`."""

    def __init__(self, layers: list, arity: int):
        self.layers, self.arity, self.depth = layers, arity, len(layers)

    def layer_log_probs(self, u: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        return self.layers[prefix.shape[-1]](u, prefix)


def _script_dr(searcher: DRSearcher, hist: torch.Tensor, k: int, beam: int) -> Scripted:
    net = searcher.net.cpu().eval()
    structure = net.structure
    # the GRU over the whole width: no width taken from the data
    encoder = _trace(_Method(net.encoder, "forward_full_width"), (_example_histories(searcher.n_items),))
    u = torch.randn(2, 3, structure.dim)
    layers = [
        _trace(_Method(structure, "layer_log_probs"), (u, torch.zeros(2, 3, d, dtype=torch.long)))
        for d in range(structure.depth)
    ]
    rerank = _trace(_Method(net.softmax, "score_items"), (u[:, 0], torch.zeros(2, 3, dtype=torch.long)))
    twin = copy.copy(searcher)
    twin.net = SimpleNamespace(  # type: ignore[assignment]
        encode=encoder, structure=_TracedLayers(layers, structure.arity), softmax=SimpleNamespace(score_items=rerank)
    )
    _check(searcher, twin, hist, k, beam)
    files = {"encoder.pt": _save(encoder), "rerank.pt": _save(rerank)}
    files.update({f"layer_{d}.pt": _save(layer) for d, layer in enumerate(layers)})
    doc = {
        "call": "u = encoder(histories); beam search over layers: logp = layer_d(u, codes of layers < d); "
        "items of the paths found (item_paths.parquet); scores = rerank(u, items)",
        "returns": "u (U, dim); layer_d (N, K) log-probabilities; rerank (U, C) logits, higher is better",
    }
    return Scripted("encoder, layer heads and rerank", files, None, doc)


# ------------------------------------------------------------------------------ RecForest
RECFOREST_DOC = {
    "call": "mem_k, mem_v, bias = encoder(histories); in every tree t a beam search over its levels with "
    "decoder_t_step_l and the decoder's cache; the items of the leaves found in any tree (item_paths.parquet), "
    "ranked by the sum over trees of log p_t(item), the leaves no beam reached scored by leaf_scorer_t",
    "encoder": "mem_k, mem_v, bias = encoder(histories): mem_k, mem_v (T, layers, U, heads, L, dh) float32, the "
    "encoded histories as the cross-attention keys and values of every tree's decoder layers (L <= 69: the "
    "longest history of the batch); bias (U, 1, 1, L) float32, -inf at padding",
    "decoder_t_step_l": "level l of tree t's decoder with its cache: logp, cache_k, cache_v = "
    "decoder_t_step_0(mem_k[t], mem_v[t], bias) at the root (P = 1), and for l >= 1 "
    "decoder_t_step_l(mem_k[t], mem_v[t], bias, last_codes, cache_k, cache_v) with last_codes (U, P) int64 the "
    "child position each of P prefixes took at level l-1 and cache_k, cache_v (layers, U, P, heads, l, dh) of "
    "those prefixes (the previous level's, indexed along P by the prefixes the beam kept) -> logp (U, P, K) "
    "float32 log-probabilities of the K children at level l, cache_k, cache_v (layers, U, P, heads, l+1, dh)",
    "leaf_scorer_t": "logp = leaf_scorer_t(mem_k[t], mem_v[t], bias, paths) with paths (U, P, H) int64 child "
    "positions root -> leaf (item_paths.parquet 'path') -> (U, P, H, K) float32 log-probabilities of every "
    "level's children (teacher forcing); log p_t(leaf) = logp.gather(-1, paths[..., None]) summed over levels",
    "returns": "log p_t(item) = log-sum-exp over the item's leaves in tree t of log p_t(leaf) (a leaf a beam "
    "reached keeps its beam log-prob); the best items have the largest sum over trees",
}


def _layers(keys: torch.Tensor, values: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stacked (layers, ...) keys and values -> [(k, v) per layer], as `PathDecoder` takes them."""
    return list(zip(keys.unbind(0), values.unbind(0)))


def _stacked(pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """[(k, v) per layer] -> keys, values stacked (layers, ...)."""
    return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])


class _Memories(nn.Module):
    """`RecForestNet.memories` as three tensors: what ``encoder.pt`` is."""

    def __init__(self, net: RecForestNet):
        super().__init__()
        self.net = net

    def forward(self, histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mems = self.net.memories(histories)
        per_tree = [_stacked(kvs) for kvs, _ in mems]  # T x (layers, U, nh, L, dh)
        return torch.stack([k for k, _ in per_tree]), torch.stack([v for _, v in per_tree]), mems[0][1]


class _Step(nn.Module):
    """`PathDecoder.step` at one level on stacked tensors: what ``decoder_t_step_l.pt`` is."""

    def __init__(self, dec: PathDecoder, level: int):
        super().__init__()
        self.dec, self.level = dec, level

    def forward(self, mem_k, mem_v, bias, last_codes=None, cache_k=None, cache_v=None):
        cache = None if cache_k is None else _layers(cache_k, cache_v)
        logp, new = self.dec.step((_layers(mem_k, mem_v), bias), last_codes, self.level, cache)
        return (logp, *_stacked(new))


class _Leaves(nn.Module):
    """`PathDecoder.level_log_probs` on stacked tensors: what ``leaf_scorer_t.pt`` is."""

    def __init__(self, dec: PathDecoder):
        super().__init__()
        self.dec = dec

    def forward(self, mem_k: torch.Tensor, mem_v: torch.Tensor, bias: torch.Tensor, paths: torch.Tensor):
        return self.dec.level_log_probs((_layers(mem_k, mem_v), bias), paths)


class _TracedDecoder:
    """One tree's traced steps and leaf scorer where grove's RecForest search calls a
    `PathDecoder` (a `StepDecoder`)."""

    def __init__(self, steps: list, leaves: torch.jit.ScriptModule, arity: int):
        self.steps, self.leaves, self.arity, self.depth = steps, leaves, arity, len(steps)

    def step(self, mem, last_codes: torch.Tensor | None, level: int, cache) -> tuple[torch.Tensor, list]:
        kvs, bias = mem
        extra = () if level == 0 else (last_codes, *_stacked(cache))
        logp, keys, values = self.steps[level](*_stacked(kvs), bias, *extra)
        return logp, _layers(keys, values)

    def level_log_probs(self, mem, codes: torch.Tensor) -> torch.Tensor:
        return self.leaves(*_stacked(mem[0]), mem[1], codes)


class _TracedNet:
    """The traced encoder and decoders where grove's RecForest search calls a `RecForestNet`."""

    def __init__(self, encoder: torch.jit.ScriptModule, decoders: list[_TracedDecoder]):
        self.encoder, self.decoders = encoder, decoders

    def memories(self, histories: torch.Tensor) -> list:
        keys, values, bias = self.encoder(histories)
        return [(_layers(k, v), bias) for k, v in zip(keys, values)]

    def decoder_list(self) -> list[_TracedDecoder]:
        return self.decoders


def _trace_decoder(dec: PathDecoder, mem_k: torch.Tensor, mem_v: torch.Tensor, bias: torch.Tensor) -> _TracedDecoder:
    """Tree ``dec``'s step per level and leaf scorer, traced on the example's memories (2 users)
    with 3 paths per user below the root, as a beam has several."""
    u, p, k = bias.shape[0], 3, dec.arity
    steps = [_trace(_Step(dec, 0), (mem_k, mem_v, bias))]
    with torch.inference_mode():
        _, cache_k, cache_v = _Step(dec, 0)(mem_k, mem_v, bias)  # (layers, U, 1, nh, 1, dh)
    cache_k, cache_v = cache_k.repeat_interleave(p, 2), cache_v.repeat_interleave(p, 2)
    last = (torch.arange(p) % k).expand(u, p)
    for level in range(1, dec.depth):
        example = (mem_k, mem_v, bias, last, cache_k, cache_v)
        steps.append(_trace(_Step(dec, level), example))
        with torch.inference_mode():
            _, cache_k, cache_v = _Step(dec, level)(*example)  # cache one level longer
    paths = torch.arange(u * p * dec.depth).reshape(u, p, dec.depth) % k
    return _TracedDecoder(steps, _trace(_Leaves(dec), (mem_k, mem_v, bias, paths)), k)


def _script_recforest(searcher: RecForestSearcher, hist: torch.Tensor, k: int, beam: int) -> Scripted:
    net = searcher.net.cpu().eval()
    example = _example_histories(searcher.n_items)
    encoder = _trace(_Memories(net), (example,))
    with torch.inference_mode():
        mem_k, mem_v, bias = encoder(example)
    decoders = [_trace_decoder(dec, mem_k[t], mem_v[t], bias) for t, dec in enumerate(net.decoder_list())]
    twin = copy.copy(searcher)
    twin.net = _TracedNet(encoder, decoders)  # type: ignore[assignment]
    _check(searcher, twin, hist, k, beam)
    files = {"encoder.pt": _save(encoder)}
    for t, dec in enumerate(decoders):
        files.update({f"decoder_{t}_step_{level}.pt": _save(step) for level, step in enumerate(dec.steps)})
        files[f"leaf_scorer_{t}.pt"] = _save(dec.leaves)
    return Scripted("encoder, decoder steps and leaf scorers", files, None, RECFOREST_DOC)


# ------------------------------------------------------------------------------ two-tower
def _script_two_tower(searcher: TwoTowerSearcher, hist: torch.Tensor, k: int, beam: int) -> Scripted:
    traced = _trace(_Method(searcher.model.cpu().eval(), "user"), (_example_histories(searcher.n_items),))
    twin = copy.copy(searcher)
    twin.model = SimpleNamespace(user=traced)  # type: ignore[assignment]
    _check(searcher, twin, hist, k, beam)
    doc = {
        "call": "vectors = tower(histories); scores = vectors @ item_vectors.T",
        "returns": "(U, d) float32 user vectors; the k best items have the largest inner products",
    }
    vectors = searcher.items.cpu().numpy().astype(np.float32)
    return Scripted("user tower and item vectors", {"user_tower.pt": _save(traced)}, vectors, doc)


# ------------------------------------------------------------------------------ shared
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


def _check(searcher: Searcher, twin: Searcher, hist: torch.Tensor, k: int, beam: int) -> None:
    """The twin (the searcher with traced modules) finds the searcher's own top-k items."""
    with torch.inference_mode():
        _, want = searcher.search(hist, k, beam)
        _, got = twin.search(hist, k, beam)
    same = (want.cpu() == got.cpu()).all(dim=1)
    if not bool(same.all()):
        bad = int((~same).nonzero()[0])
        raise GroveError(
            f"the traced model's top-{k} differs from the version's for history {bad} of {len(same)}: export refused"
        )
