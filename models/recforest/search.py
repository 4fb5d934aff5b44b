"""RecForest retrieval (appendix Algorithm 4): beam search per tree with cached decoding, the
union of the items found, and the forest score  sum_t log p_t(item)  over every tree.

An item may sit at several leaves of a complete tree (Algorithm 2 duplicates items). We define
``p_t(item) = sum over the item's leaves of p_t(leaf path)``: the probability that decoder t
generates the item. Training samples a leaf uniformly among the item's leaves (see
`ForestTables.sample_codes`), so probability mass is spread over all of them; scoring takes the
log-sum-exp over leaves. Leaf log-probs a tree's beam search computed are reused: its beam's
leaves and every sibling of them (its last level scores every child of the prefixes it kept).
Every other (candidate, leaf) pair is scored from its parent: by teacher forcing, one decoder pass
per distinct parent (an item's copies sit on sibling leaves), compacted to a fixed-width batch; or,
when the parents are many (a forest's other trees' candidates), decoded level by level with the
cache over their distinct prefixes only (fewer token steps than H per parent, more decoder calls).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from grove.indexstore.errors import StructureError
from grove.indexstore.structures import Forest, Tree
from grove.models.method import Searcher
from grove.models.precision import search_mode
from grove.models.recforest.network import (
    BeamLevel,
    RecForestNet,
    StepDecoder,
    all_leaf_log_probs,
    beam_search_with_siblings,
    descend,
    find_in_rows,
    path_codes,
    prefix_groups,
    prefix_log_probs,
)
from grove.models.topk import ranked, unique_rows

PATH_CHUNK = 1 << 16  # max (users x paths) scored by teacher forcing at once
EXPAND_MARGIN = 1.25  # a cached decoder step per (user, path) costs this x a teacher-forced token
# the fixed cost of one decoder call (a step or a teacher-forced pass), in (user, path) tokens: at
# small batches a few calls cost more than the tokens they save
STEP_TOKENS = 32
# a compiled one-tree search steps up to this x beam distinct parents of the beam items' other
# leaves (`RecForestSearcher._one_tree_ranking`); a row with more is ranked eagerly
ONE_TREE_PARENTS = 2


def tree_code_tables(tree: Tree, index: int) -> tuple[np.ndarray, np.ndarray]:
    """A complete K-ary tree -> (leaf_item (K^H,) item of each leaf code, item_codes (n, R)
    the leaf codes of every item padded -1). A leaf code is its path read as a base-K int."""
    k, depth = tree.arity, tree.depth
    leaves, items, paths = tree.leaf_paths()
    if depth == 0 or (tree.level[leaves] != depth).any() or leaves.size != k**depth:
        raise StructureError(
            f"RecForest tree {index} is not a complete {k}-ary tree "
            f"({leaves.size} leaves at depth {depth}, need {k}^{depth})"
        )
    code = paths @ (k ** np.arange(depth - 1, -1, -1, dtype=np.int64))
    leaf_item = np.empty(k**depth, dtype=np.int64)
    leaf_item[code] = items
    order = np.lexsort((code, items))  # leaves grouped by item
    counts = np.bincount(items, minlength=tree.n_items)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(order.size) - first[items[order]]
    item_codes = np.full((tree.n_items, int(counts.max())), -1, dtype=np.int64)
    item_codes[items[order], rank] = code[order]
    return leaf_item, item_codes


@dataclass
class ForestTables:
    """Per tree, on one device: leaf_item (K^H,), item_codes (n_items, R), n_codes (n_items,)."""

    arity: int
    depths: list[int]
    leaf_item: list[torch.Tensor]
    item_codes: list[torch.Tensor]
    n_codes: list[torch.Tensor]

    @classmethod
    def from_forest(cls, forest: Forest, device) -> ForestTables:
        arities = {t.arity for t in forest.trees}
        if len(arities) != 1:
            raise StructureError(f"the trees of a RecForest index have different arities {sorted(arities)}")
        leaf_item, item_codes, n_codes = [], [], []
        for i, tree in enumerate(forest.trees):
            li, ic = tree_code_tables(tree, i)
            leaf_item.append(torch.as_tensor(li, device=device))
            item_codes.append(torch.as_tensor(ic, device=device))
            n_codes.append((item_codes[-1] >= 0).sum(1))
        return cls(arities.pop(), [t.depth for t in forest.trees], leaf_item, item_codes, n_codes)

    def digits(self, codes: torch.Tensor, t: int) -> torch.Tensor:
        """Leaf codes (...) -> K-way paths (..., H_t)."""
        h = self.depths[t]
        place = torch.tensor([self.arity**i for i in range(h - 1, -1, -1)], dtype=torch.long, device=codes.device)
        return (codes.clamp(min=0)[..., None] // place) % self.arity

    def to_codes(self, digits: torch.Tensor) -> torch.Tensor:
        return path_codes(digits, self.arity)

    def candidate_leaves(self, cand: torch.Tensor, t: int) -> torch.Tensor:
        """Candidate items (U, C) (-1 holes) -> the codes of their leaves in tree t, (U, C * R),
        -1 for padding and holes."""
        leaves = self.item_codes[t][cand.clamp(min=0)]  # (U, C, R)
        return torch.where((cand >= 0)[..., None], leaves, torch.full_like(leaves, -1)).flatten(1)

    def sample_codes(self, items: torch.Tensor, t: int, gen: torch.Generator) -> torch.Tensor:
        """Training targets: for items (n,), one of each item's leaves in tree t, uniformly
        at random -> paths (n, H_t)."""
        u = torch.rand(items.shape, generator=gen, device=gen.device).to(items.device)
        r = (u * self.n_codes[t][items]).long()
        return self.digits(self.item_codes[t][items, r], t)


def score_paths(dec: StepDecoder, mem, digits: torch.Tensor, groups=None) -> torch.Tensor:
    """Teacher-forced log p(path) for digits (U, P, H) -> (U, P), chunked over the parents.

    Paths of one user that share their first H-1 codes (siblings) share one decoder pass: the
    decoder's states depend on the prefix only, and the last level's K log-probs cover every
    sibling. RecForest puts an item's copies on adjacent leaves (Algorithm 2), so the leaves a
    final ranking asks for are mostly siblings: on ml-latest-small's 18^4-leaf trees, ~11 leaves
    per item, this runs the decoder on several times fewer sequences than one pass per path.
    ``groups``: `prefix_groups` of these paths' parents when the caller has it already."""
    u, p, h = digits.shape
    k = dec.arity
    if groups is None:
        groups = prefix_groups(path_codes(digits[..., :-1], k))
    slot, rep = groups
    if not rep.shape[1]:
        return digits.new_zeros(u, p, dtype=torch.float32)
    reps = digits.gather(1, rep[..., None].expand(-1, -1, h))  # (U, W, H)
    step = max(1, PATH_CHUNK // max(u, 1))
    head, last = [], []
    for i in range(0, reps.shape[1], step):
        logp = dec.level_log_probs(mem, reps[:, i : i + step])  # (U, w, H, K)
        head.append(logp[:, :, :-1].gather(-1, reps[:, i : i + step, :-1, None]).squeeze(-1).sum(-1))
        last.append(logp[:, :, -1])  # (U, w, K)
    heads, lasts = torch.cat(head, dim=1), torch.cat(last, dim=1)
    return heads.gather(1, slot) + lasts.gather(1, slot[..., None].expand(-1, -1, k)).gather(
        2, digits[..., -1:]
    ).squeeze(-1)


class RecForestSearcher(Searcher):
    """Beam search over every tree's decoder, union of items, rank by sum_t log p_t(item)."""

    # how the candidates' leaves missing from a tree's beam (and from its last level's siblings)
    # are scored: "teacher" (forcing the missing paths, one pass per parent), "cached" (their
    # parents decoded level by level with the cache, one step per distinct prefix), "expand" (every
    # leaf, by expanding the tree); "auto" takes the cheaper of teacher and cached (`_cache_pays`)
    leaf_scoring = "auto"

    def __init__(self, net: RecForestNet, tables: ForestTables, n_items: int, device: torch.device):
        self.net, self.tables, self.n_items, self.device = net.eval(), tables, n_items, device
        self._last_candidates: float | None = None
        self._compiled_search: Callable[[torch.Tensor, int, int], tuple[list, list, tuple | None]] | None = None
        self._compiled_descend: Callable[..., tuple] | None = None

    def last_candidates(self) -> float | None:
        return self._last_candidates

    def _all_leaves(self, t: int, mem) -> torch.Tensor:
        """log p_t(leaf) of every leaf of tree t, (U, K^H): the tree expanded with the cache, in
        user chunks of <= PATH_CHUNK last-level prefixes."""
        step = max(1, PATH_CHUNK // self.tables.arity ** max(0, self.tables.depths[t] - 1))
        dec, u = self.net.decoder_list()[t], mem[1].shape[0]
        return torch.cat([all_leaf_log_probs(dec, _user_slice(mem, i, i + step)) for i in range(0, u, step)])

    def _item_log_probs(self, t, mem, cand, leaf_codes, leaf_lp, start: BeamLevel | None = None):
        """log p_t(item) for candidates (U, C) (-1 holes -> -inf), reusing the leaves the beam
        search scored: leaf_codes / leaf_lp (U, B), distinct codes in each row; ``start``: the
        beam's deepest complete level, where cached decoding resumes (`prefix_log_probs`)."""
        tab, dec = self.tables, self.net.decoder_list()[t]
        u, c = cand.shape
        leaves = tab.candidate_leaves(cand, t)  # (U, C * R)
        at, hit = find_in_rows(leaf_codes, leaves)
        hit &= leaves >= 0
        lp = torch.where(hit, leaf_lp.gather(1, at), torch.full_like(leaves, 0.0, dtype=leaf_lp.dtype))
        lp = lp.masked_fill(leaves < 0, float("-inf"))
        missing = (leaves >= 0) & ~hit
        width = int(missing.sum(1).max().item()) if missing.numel() else 0
        if not width:
            return torch.logsumexp(lp.view(u, c, -1), dim=2)
        idx = torch.argsort((~missing).to(torch.int8), dim=1, stable=True)[:, :width]  # (U, W)
        sub = leaves.gather(1, idx)
        if self.leaf_scoring == "expand":
            every = self._all_leaves(t, mem)  # (U, K^H)
            lp = torch.where(missing, every.gather(1, leaves.clamp(min=0)), lp)
            return torch.logsumexp(lp.view(u, c, -1), dim=2)
        groups = prefix_groups(sub.clamp(min=0) // tab.arity)  # leaf code // K = its parent's code
        first = 0 if start is None else start.prefixes.shape[2] + 1  # the first level decoded
        if self.leaf_scoring == "teacher" or (
            self.leaf_scoring == "auto" and not self._cache_pays(t, u, groups[1].shape[1], first)
        ):
            scored = score_paths(dec, mem, tab.digits(sub, t), groups)
        else:  # the missing leaves' parents decoded with the cache over their distinct prefixes
            scored = self._cached_leaves(t, mem, sub.clamp(min=0), start)
        take = missing.gather(1, idx)
        lp = lp.scatter(1, idx, torch.where(take, scored, lp.gather(1, idx)))
        return torch.logsumexp(lp.view(u, c, -1), dim=2)

    def _cache_pays(self, t: int, u: int, g: int, first: int = 0) -> bool:
        """Whether decoding G distinct parents level by level with the cache from level
        ``first`` (the beam's levels above it resume the decoding; at most sum_l min(K^l, G)
        tokens a user, one call a level) beats teacher-forcing them (G x H tokens, one call), a
        call costing `STEP_TOKENS` tokens and a teacher-forced token 1 / EXPAND_MARGIN of a
        cached one."""
        k, depth = self.tables.arity, self.tables.depths[t]
        levels = range(first, depth)
        cached = sum(min(k**level, g) for level in levels)
        return u * (g * depth / EXPAND_MARGIN - cached) > (len(levels) - 1) * STEP_TOKENS

    def _cached_leaves(self, t: int, mem, leaves: torch.Tensor, start: BeamLevel | None = None) -> torch.Tensor:
        """log p_t(leaf) of leaf codes (U, W) by `prefix_log_probs` over their parents (resumed
        from ``start``), in user chunks of <= PATH_CHUNK parents."""
        k, dec = self.tables.arity, self.net.decoder_list()[t]
        down = descend if self._compiled_descend is None else self._compiled_descend
        step = max(1, PATH_CHUNK // max(1, leaves.shape[1]))
        out = []
        for i in range(0, leaves.shape[0], step):
            part = leaves[i : i + step]
            resume = None if start is None else _level_slice(start, i, i + step)
            head, last = prefix_log_probs(dec, _user_slice(mem, i, i + step), part // k, resume, down)
            out.append(head + last.gather(2, (part % k)[..., None]).squeeze(-1))
        return torch.cat(out)

    def compile(self, whole_search: bool = False) -> None:
        """Compile the search with ``torch.compile(dynamic=False)``: at batch 1 a search is mostly
        the fixed cost of many small operators, which one graph fuses (on a CPU with inductor's
        C++ wrapper, which calls the kernels without Python in between).

        The graph (`_static_search`) holds the encoder and every tree's beam search, and with one
        tree the final ranking too (`_one_tree_ranking`): the beam's items, their other leaves
        scored by one decoder step from the level before the last. A forest's other trees'
        candidates, or one tree's leaves that step cannot reach, have widths that depend on the
        data and are ranked eagerly after the graph. ``whole_search`` (``--compile search``
        rather than ``level``) compiles the same: the beam search is already whole.

        Histories keep their full width (masked, no padding trim); batches are padded to the
        next power of two; each new padded size, k or beam compiles again (tens of seconds on a
        CPU), so it suits a server whose batch sizes are few (a batch-1 latency path). The scores
        equal the eager ones up to float rounding."""
        options: dict[str, str | int | bool | Callable[..., Any]] | None = (
            {"cpp_wrapper": True} if self.device.type == "cpu" else None
        )
        self._compiled_search = torch.compile(self._static_search, dynamic=False, options=options)
        # the eager ranking's cached descent: widths vary, so one graph with symbolic sizes
        self._compiled_descend = torch.compile(descend, dynamic=True)

    def _tree_beams(self, mems: list, beam: int) -> list:
        """Per tree, `beam_search_with_siblings` over its memory."""
        return [beam_search_with_siblings(dec, mem, beam) for dec, mem in zip(self.net.decoder_list(), mems)]

    def _static_search(self, histories: torch.Tensor, k: int, beam: int):
        """What `compile` compiles, with no host sync and no shape taken from the data: histories
        (U, 69) at full width -> the memories, every tree's beams, and with one tree its
        `_one_tree_ranking` (else None)."""
        mems = self.net.memories(histories, trim=False)
        beams = self._tree_beams(mems, beam)
        ranking = self._one_tree_ranking(mems[0], beams[0], k) if len(beams) == 1 else None
        return mems, beams, ranking

    def _one_tree_ranking(self, mem, beams, k: int):
        """A one-tree index's final ranking in fixed shapes: the items of the beam's leaves
        (U, B), each scored by the sum over its leaves (U, B, R). A leaf under one of the last
        level's kept parents has its log-prob already; the others' distinct parents (at most
        `ONE_TREE_PARENTS` x B of them) take one decoder step each from their grandparent's
        cache, which the level before the last kept (`BeamLevel`). Returns (scores (U, k),
        items (U, k), resolved (U,) bool, candidates (U,)): resolved is False where a row had more
        parents than that, or one whose grandparent that level did not step -- such a batch is
        ranked eagerly."""
        digits, _, parents, children, levels = beams
        grand = levels[-2] if len(levels) > 1 else None
        tab, dec = self.tables, self.net.decoder_list()[0]
        kk, u = tab.arity, digits.shape[0]
        cand = unique_rows(tab.leaf_item[0][tab.to_codes(digits)])  # (U, B)
        b = cand.shape[1]
        leaves = tab.candidate_leaves(cand, 0)  # (U, B * R)
        parent, child = leaves.clamp(min=0) // kk, leaves.clamp(min=0) % kk
        at, hit = find_in_rows(tab.to_codes(parents), parent)  # among the last level's parents
        hit &= leaves >= 0
        known = children.flatten(1).gather(1, at * kk + child)
        missing = (leaves >= 0) & ~hit
        # the missing leaves' distinct parents, sorted, first W of them; `none` pads
        none = kk ** (tab.depths[0] - 1)
        key, _ = torch.where(missing, parent, torch.full_like(parent, none)).sort(dim=1)
        first = torch.ones_like(key, dtype=torch.bool)
        first[:, 1:] = key[:, 1:] != key[:, :-1]
        first &= key < none
        w = min(ONE_TREE_PARENTS * b, key.shape[1])
        todo = torch.where(first, key, torch.full_like(key, none)).sort(dim=1)[0][:, :w]  # (U, W)
        resolved = first.sum(1) <= w
        if grand is None:  # depth 1: every leaf is a child of the root, none missing
            lp = torch.where(hit, known, torch.full_like(known, float("-inf")))
        else:
            at_g, found = find_in_rows(tab.to_codes(grand.prefixes), todo // kk)  # (U, W) in the level H-2
            resolved &= (found | (todo == none)).all(1)
            head, logp, _, _ = descend(dec, mem, grand.children, grand.cache, at_g, todo % kk, tab.depths[0] - 1)
            slot, _ = find_in_rows(todo, parent)
            stepped = head.gather(1, slot) + logp.flatten(1).gather(1, slot * kk + child)
            lp = torch.where(hit, known, torch.where(missing, stepped, torch.full_like(known, float("-inf"))))
        total = torch.logsumexp(lp.view(u, b, -1), dim=2).masked_fill(cand < 0, float("-inf"))
        scores, items = ranked(total, cand, k)
        return scores, items, resolved, (cand >= 0).sum(1)

    @search_mode
    def search(self, histories: torch.Tensor, k: int, beam: int):
        histories = histories.to(self.device).long()
        u = histories.shape[0]
        if self._compiled_search is None:
            mems = self.net.memories(histories)
            beams = self._tree_beams(mems, beam)
        else:
            size = 1 << max(0, (u - 1).bit_length())  # batches padded to a power of two: few graphs
            if size > u:
                histories = torch.cat([histories, histories.new_full((size - u, histories.shape[1]), -1)])
            mems, beams, ranking = self._compiled_search(histories, k, beam)
            if ranking is not None and bool(ranking[2][:u].all()):
                self._last_candidates = float(ranking[3][:u].float().mean())
                return ranking[0][:u], ranking[1][:u]
            mems = [_user_slice(mem, 0, u) for mem in mems]
            beams = [(*(x[:u] for x in b[:4]), [lv and _level_slice(lv, 0, u) for lv in b[4]]) for b in beams]
        return self._ranking(mems, beams, k)

    def _ranking(self, mems: list, beams: list, k: int):
        """The union of every tree's beam items ranked by sum_t log p_t(item), with data-dependent
        widths (`_item_log_probs`)."""
        tab, found, leaves = self.tables, [], []
        for t, (digits, _, parents, children, levels) in enumerate(beams):
            found.append(tab.leaf_item[t][tab.to_codes(digits)])
            # the beam's leaves and their siblings, scored on the way: codes parent * K + child (U, P*K)
            sib = tab.to_codes(parents)[..., None] * tab.arity + torch.arange(tab.arity, device=self.device)
            # the deepest level above the parents whose every prefix the beam stepped (K^l <= beam)
            complete = [
                lv for lv in levels[:-1] if lv is not None and lv.children.shape[1] == tab.arity ** lv.prefixes.shape[2]
            ]
            leaves.append((sib.flatten(1), children.flatten(1), complete[-1] if complete else None))
        cand = unique_rows(torch.cat(found, dim=1))  # (U, C)
        self._last_candidates = float((cand >= 0).sum(1).float().mean().item())
        total = torch.zeros(cand.shape, device=self.device)
        for t, mem in enumerate(mems):
            total = total + self._item_log_probs(t, mem, cand, *leaves[t])
        total = total.masked_fill(cand < 0, float("-inf"))
        return ranked(total, cand, k)

    @search_mode
    def exhaustive(self, histories: torch.Tensor, k: int):
        """Every item scored by sum_t log p_t(item): every leaf's log-prob from expanding each
        tree level by level (`all_leaf_log_probs`), the same values teacher forcing gives at
        about 1 / (H (K - 1)) of its decoder token steps."""
        histories = histories.to(self.device).long()
        u = histories.shape[0]
        total = torch.zeros(u, self.n_items, device=self.device)
        for t, mem in enumerate(self.net.memories(histories)):
            leaf_lp = self._all_leaves(t, mem)  # (U, K^H), leaf-code order
            codes = self.tables.item_codes[t]  # (n_items, R)
            per = leaf_lp[:, codes.clamp(min=0)].masked_fill((codes < 0)[None], float("-inf"))
            total = total + torch.logsumexp(per, dim=2)
        items = torch.arange(self.n_items, device=self.device).expand(u, -1)
        return ranked(total, items, k)


def _level_slice(level: BeamLevel, lo: int, hi: int) -> BeamLevel:
    """Users lo..hi of a `BeamLevel`."""
    return BeamLevel(level.prefixes[lo:hi], level.children[lo:hi], [(k[lo:hi], v[lo:hi]) for k, v in level.cache])


def _user_slice(mem, lo: int, hi: int):
    """Users lo..hi of a decoder memory ([(k, v) per layer], bias), all batch-first."""
    kvs, bias = mem
    return [(k[lo:hi], v[lo:hi]) for k, v in kvs], bias[lo:hi]
