"""DeFoRec (SIGIR 2022) tree learning by the softmax matching score (§5, Eq. 10).

JTM's top-down assignment with gap d (`grove.models.tree_learning`) where an item's
weight for a candidate node n_j at level l = min(l0 + d, depth) under its current node is
``sum over its training pairs of log softmax_j(o_u^j)`` over the c candidates (Eq. 10), then
`grove.models.tree_learning.assign_with_capacity` (capacity = leaves under the node; JTM's rebalance).
"""

from __future__ import annotations

import torch

from grove.indexstore.samples import TrainingSamples
from grove.indexstore.structures import Tree
from grove.models.node_scorer import TDMScorer, default_chunk_elements
from grove.models.progress import Progress
from grove.models.tree_learning import PairChunks, layout_depth, learn_top_down, position_maps


def learn_tree_softmax(
    scorer: TDMScorer,
    tree: Tree,
    samples: TrainingSamples,
    gap: int = 7,
    max_samples: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_elements: int | None = None,
) -> Tree:
    """A new tree from the trained ``scorer`` by the softmax matching score (Eq. 10).

    Parameters
    ----------
    scorer : trained on ``tree``; samples : the training pairs.
    gap : d, levels assigned per step; max_samples : seeded subset of pairs to score.
    max_elements : activation floats per chunk of pairs (None: `grove.models.node_scorer.default_chunk_elements`).

    Returns
    -------
    Tree of arity ``tree.arity`` with all leaves at depth ceil(log_K n_items), one leaf per item.
    """
    device = torch.device(device)
    if max_elements is None:  # activation floats per chunk of pairs: 2**20 on CPU, large on CUDA
        max_elements = default_chunk_elements(device)
    pairs = PairChunks(samples, max_samples, seed, device)
    maps = [torch.as_tensor(mp, device=device) for mp in position_maps(tree, layout_depth(tree.n_items, tree.arity))]
    scorer = scorer.to(device).eval()

    def weights(l0: int, g: int, cur: torch.Tensor, prog: Progress) -> torch.Tensor:
        return _softmax_weights(scorer, maps[l0 + g], tree.arity**g, cur, pairs, max_elements, prog)

    return learn_top_down(tree, pairs, gap, weights, "deforec tree learning")


def _softmax_weights(
    scorer: TDMScorer,
    level_map: torch.Tensor,
    width: int,
    cur: torch.Tensor,
    pairs: PairChunks,
    max_elements: int,
    prog: Progress,
) -> torch.Tensor:
    """(m, width): sum over each item's pairs of log softmax over the ``width`` candidate
    positions under the item's current node (positions -> old-tree nodes by ``level_map``)."""
    out = torch.zeros(pairs.items.shape[0], width, device=cur.device)
    offs = torch.arange(width, device=cur.device)
    per_column = scorer.act_width
    with torch.inference_mode():
        for sl, hist in pairs.chunks(per_column, width, max_elements):
            nodes = level_map[cur[pairs.targets[sl]].unsqueeze(1) * width + offs]  # (b, width) old-tree nodes
            out.index_add_(0, pairs.row[sl], torch.log_softmax(scorer(hist, nodes), dim=1))
            prog.update(hist.shape[0])
    return out
