"""JTM (NeurIPS 2019) tree learning, paper Algorithm 2 (supplement B).

Items are re-assigned to the positions of a complete K-ary tree of depth ``D = ceil(log_K
n_items)``, top down, ``gap`` (d) levels at a time (`grove.models.tree_learning.learn_top_down`). At
step l0 -> l = min(l0 + d, D) every item, already under a node n_i of level l0, picks one of
n_i's K**(l - l0) descendants at level l by the weight

    L_c(child) = sum over training pairs (u, c) with target c of
                 sum_{j = l0+1..l} log p(ancestor of child at level j | u)

under the current model (the scorer and the tree it was trained with). Then the rebalance: a
child holds at most K**(D - l) items; items whose choice equals their previous assignment are
kept first, the other items of a full child by descending weight, and the overflow moves to the
best child that still has room (done in vectorised rounds, see
`grove.models.tree_learning.assign_with_capacity`, which JTM shares with DeFoRec). The
result is a complete layout pruned of empty subtrees: every item at exactly one leaf, all
leaves at depth D.

Choices where the paper is silent
---------------------------------
* A position of the complete layout that the old tree lacks is scored with the embedding of its
  deepest existing ancestor (a leaf's item stands in for positions below it), so the old model
  can score every position.
* The rebalance ranks competing items by the MEAN log-likelihood per training pair, not the sum:
  a sum favours items with few pairs (fewer negative terms). Items with no training pair keep
  their previous child when it is still under their node, and otherwise yield to items with
  evidence.
* Tree learning scores at most ``max_samples`` training pairs (seeded subset): the cost is
  O(samples * K**(d+1)) scorer calls per step, each linear in the history's length; the pairs
  are scored shortest history first, in chunks cut to their longest one
  (`grove.models.tree_learning.PairChunks`).
"""

from __future__ import annotations

import torch

from grove.indexstore.samples import TrainingSamples
from grove.indexstore.structures import Tree
from grove.models.node_scorer import TDMScorer, default_chunk_elements
from grove.models.progress import Progress
from grove.models.tree_learning import PairChunks, layout_depth, learn_top_down, position_maps


def learn_tree(
    scorer: TDMScorer,
    tree: Tree,
    samples: TrainingSamples,
    gap: int = 7,
    max_samples: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_elements: int | None = None,
) -> Tree:
    """JTM Algorithm 2: a new tree over ``tree.n_items`` items from the trained ``scorer``.

    Parameters
    ----------
    scorer : the model trained on ``tree``; any `TDMScorer`, JTM uses `HierarchicalScorer`.
    samples : the training pairs; at most ``max_samples`` of them are scored (seeded subset).
    gap : d, levels assigned per step.
    max_elements : activation floats per chunk of pairs (None: `grove.models.node_scorer.default_chunk_elements`).

    Returns
    -------
    Tree with arity ``tree.arity``, all leaves at depth ceil(log_K n_items), one leaf per item.
    """
    device = torch.device(device)
    if max_elements is None:  # activation floats per chunk of pairs: 2**20 on CPU, large on CUDA
        max_elements = default_chunk_elements(device)
    pairs = PairChunks(samples, max_samples, seed, device)
    maps = [torch.as_tensor(m, device=device) for m in position_maps(tree, layout_depth(tree.n_items, tree.arity))]
    scorer = scorer.to(device).eval()

    def weights(l0: int, g: int, cur: torch.Tensor, prog: Progress) -> torch.Tensor:
        return _step_weights(scorer, maps, l0, g, tree.arity, cur, pairs, max_elements, prog)

    return learn_top_down(tree, pairs, gap, weights, "jtm tree learning")


def _step_weights(
    scorer: TDMScorer,
    maps: list[torch.Tensor],
    l0: int,
    g: int,
    k: int,
    cur: torch.Tensor,
    pairs: PairChunks,
    max_elements: int,
    prog: Progress,
) -> torch.Tensor:
    """(m, K**g) summed log-likelihood of the items with pairs for every child position.

    For a pair, the nodes of each level l0+j (j = 1..g) under its target's current position are
    scored in one call per level (all of one level: the scorer maps the behaviours to that level
    once per user); a child r at level l0+g sums the log-likelihoods of its ancestors, column
    r // K**(g-j) of level j."""
    width = k**g
    offsets = [torch.arange(k**j, device=cur.device) for j in range(1, g + 1)]
    out = torch.zeros(pairs.items.shape[0], width, device=cur.device)
    cols = sum(k**j for j in range(1, g + 1))
    per_column = scorer.act_width
    with torch.inference_mode():
        for sl, hist in pairs.chunks(per_column, cols, max_elements):
            base = cur[pairs.targets[sl]].unsqueeze(1)  # (b, 1) position at level l0
            total = torch.zeros(hist.shape[0], width, device=cur.device)
            for j in range(1, g + 1):
                nodes = maps[l0 + j][base * k**j + offsets[j - 1]]  # (b, K**j) old-tree nodes
                logp = torch.nn.functional.logsigmoid(scorer(hist, nodes))
                total += logp.repeat_interleave(k ** (g - j), dim=1)  # (b, K**g)
            out.index_add_(0, pairs.row[sl], total)
            prog.update(hist.shape[0])
    return out
