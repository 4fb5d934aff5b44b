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

import numpy as np
import torch

from grove.indexstore.errors import StructureError
from grove.indexstore.structures import Forest, Tree
from grove.models.method import Searcher
from grove.models.precision import search_mode
from grove.models.recforest.network import (
    RecForestNet,
    StepDecoder,
    all_leaf_log_probs,
    beam_search_with_siblings,
    prefix_groups,
    prefix_log_probs,
)
from grove.models.topk import ranked, unique_rows

PATH_CHUNK = 1 << 16  # max (users x paths) scored by teacher forcing at once
EXPAND_MARGIN = 1.25  # a cached decoder step per (user, path) costs this x a teacher-forced token
# the fixed cost of one decoder call (a step or a teacher-forced pass), in (user, path) tokens: at
# small batches a few calls cost more than the tokens they save
STEP_TOKENS = 32


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
        powers = self.arity ** torch.arange(h - 1, -1, -1, device=codes.device)
        return (codes.clamp(min=0)[..., None] // powers) % self.arity

    def to_codes(self, digits: torch.Tensor) -> torch.Tensor:
        h = digits.shape[-1]
        powers = self.arity ** torch.arange(h - 1, -1, -1, device=digits.device)
        return (digits * powers).sum(-1)

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
        groups = prefix_groups((digits[..., :-1] * k ** torch.arange(h - 2, -1, -1, device=digits.device)).sum(-1))
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
        self._compiled_beams: Callable[[torch.Tensor, int], tuple[list, list]] | None = None

    def last_candidates(self) -> float | None:
        return self._last_candidates

    def _all_leaves(self, t: int, mem) -> torch.Tensor:
        """log p_t(leaf) of every leaf of tree t, (U, K^H): the tree expanded with the cache, in
        user chunks of <= PATH_CHUNK last-level prefixes."""
        step = max(1, PATH_CHUNK // self.tables.arity ** max(0, self.tables.depths[t] - 1))
        dec, u = self.net.decoder_list()[t], mem[1].shape[0]
        return torch.cat([all_leaf_log_probs(dec, _user_slice(mem, i, i + step)) for i in range(0, u, step)])

    def _item_log_probs(self, t, mem, cand, leaf_codes, leaf_lp):
        """log p_t(item) for candidates (U, C) (-1 holes -> -inf), reusing the leaves the beam
        search scored: leaf_codes / leaf_lp (U, B), distinct codes in each row."""
        tab, dec = self.tables, self.net.decoder_list()[t]
        u, c = cand.shape
        leaves = tab.item_codes[t][cand.clamp(min=0)]  # (U, C, R)
        leaves = torch.where((cand >= 0)[..., None], leaves, torch.full_like(leaves, -1)).reshape(u, -1)
        sorted_codes, order = leaf_codes.sort(dim=1)
        pos = torch.searchsorted(sorted_codes, leaves).clamp(max=sorted_codes.shape[1] - 1)
        hit = (sorted_codes.gather(1, pos) == leaves) & (leaves >= 0)
        lp = torch.where(
            hit, leaf_lp.gather(1, order.gather(1, pos)), torch.full_like(leaves, 0.0, dtype=leaf_lp.dtype)
        )
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
        if self.leaf_scoring == "teacher" or self.leaf_scoring == "auto" and not self._cache_pays(t, u, groups):
            scored = score_paths(dec, mem, tab.digits(sub, t), groups)
        else:  # the missing leaves' parents decoded with the cache over their distinct prefixes
            scored = self._cached_leaves(t, mem, sub.clamp(min=0))
        take = missing.gather(1, idx)
        lp = lp.scatter(1, idx, torch.where(take, scored, lp.gather(1, idx)))
        return torch.logsumexp(lp.view(u, c, -1), dim=2)

    def _cache_pays(self, t: int, u: int, groups) -> bool:
        """Whether decoding G distinct parents level by level with the cache (at most
        sum_l min(K^l, G) tokens a user, H decoder calls) beats teacher-forcing them (G x H
        tokens, one call), a call costing `STEP_TOKENS` tokens and a teacher-forced token
        1 / EXPAND_MARGIN of a cached one."""
        k, depth, g = self.tables.arity, self.tables.depths[t], groups[1].shape[1]
        cached = sum(min(k**level, g) for level in range(depth))
        return u * (g * depth / EXPAND_MARGIN - cached) > (depth - 1) * STEP_TOKENS

    def _cached_leaves(self, t: int, mem, leaves: torch.Tensor) -> torch.Tensor:
        """log p_t(leaf) of leaf codes (U, W) by `prefix_log_probs` over their parents, in user
        chunks of <= PATH_CHUNK parents."""
        k, dec = self.tables.arity, self.net.decoder_list()[t]
        step = max(1, PATH_CHUNK // max(1, leaves.shape[1]))
        out = []
        for i in range(0, leaves.shape[0], step):
            part = leaves[i : i + step]
            head, last = prefix_log_probs(dec, _user_slice(mem, i, i + step), part // k)
            out.append(head + last.gather(2, (part % k)[..., None]).squeeze(-1))
        return torch.cat(out)

    def compile(self, whole_search: bool = False) -> None:
        """Compile the encoder and every tree's beam search (`_static_beams`) as one graph with
        ``torch.compile(dynamic=False)``: at batch 1 a search is mostly the fixed cost of many
        small operators, which the graph fuses. The final ranking, whose widths depend on the
        candidates found, stays eager. ``whole_search`` (``--compile search`` rather than
        ``level``) compiles the same: the beam search is already whole.

        Histories keep their full width (masked, no padding trim); batches are padded to the
        next power of two; each new padded size or beam compiles again (tens of seconds on a
        CPU), so it suits a server whose batch sizes are few (a batch-1 latency path). The scores
        equal the eager ones up to float rounding."""
        self._compiled_beams = torch.compile(self._static_beams, dynamic=False)

    def _tree_beams(self, mems: list, beam: int) -> list:
        """Per tree, `beam_search_with_siblings` over its memory."""
        return [beam_search_with_siblings(dec, mem, beam) for dec, mem in zip(self.net.decoder_list(), mems)]

    def _static_beams(self, histories: torch.Tensor, beam: int) -> tuple[list, list]:
        """The memories and every tree's beams with no host sync and no shape taken from the
        data (what `compile` compiles): histories (U, 69) at full width."""
        mems = self.net.memories(histories, trim=False)
        return mems, self._tree_beams(mems, beam)

    @search_mode
    def search(self, histories: torch.Tensor, k: int, beam: int):
        histories = histories.to(self.device).long()
        u = histories.shape[0]
        if self._compiled_beams is None:
            mems = self.net.memories(histories)
            beams = self._tree_beams(mems, beam)
        else:
            size = 1 << max(0, (u - 1).bit_length())  # batches padded to a power of two: few graphs
            if size > u:
                histories = torch.cat([histories, histories.new_full((size - u, histories.shape[1]), -1)])
            mems, beams = self._compiled_beams(histories, beam)
            mems = [_user_slice(mem, 0, u) for mem in mems]
            beams = [tuple(x[:u] for x in b) for b in beams]
        tab, found, leaves = self.tables, [], []
        for t, (digits, _, parents, children) in enumerate(beams):
            found.append(tab.leaf_item[t][tab.to_codes(digits)])
            # the beam's leaves and their siblings, scored on the way: codes parent * K + child (U, P*K)
            sib = tab.to_codes(parents)[..., None] * tab.arity + torch.arange(tab.arity, device=self.device)
            leaves.append((sib.flatten(1), children.flatten(1)))
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


def _user_slice(mem, lo: int, hi: int):
    """Users lo..hi of a decoder memory ([(k, v) per layer], bias), all batch-first."""
    kvs, bias = mem
    return [(k[lo:hi], v[lo:hi]) for k, v in kvs], bias[lo:hi]
