"""A version's scorer as TorchScript, for serving an exported index outside grove
(``grove export``).

TDM and JTM: ``scorer.pt`` is the node scorer traced on CPU,
``scores = scorer(histories, nodes)`` with histories (U, 69) int64 dense item ids, nearest first,
-1 padded, and nodes (U, C) int64 tree node ids -> (U, C) float logits (higher is better). Beam
search over ``nodes.parquet`` with it is TDM's Algorithm 1 (README, "Export"). JTM's behaviours
are mapped to each node's level inside the module. `script_scorer` checks the traced module
before it is written: grove's own beam search, driven by it, must return the same top-k items as
the version's searcher on the histories given.

Other methods have no scripted scorer yet (`scripted_kind` returns None and the export says so):
their structure and weights are exported, and ``grove import-index`` reads them back.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from grove.indexstore.errors import GroveError
from grove.indexstore.samples import MAX_BEHAVIOURS
from grove.models.beam_search import beam_search
from grove.models.method import Searcher
from grove.models.node_scorer import TDMScorer
from grove.models.tree_method import TreeSearcher

SCRIPT = "scorer.pt"


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


def scripted_kind(searcher: Searcher) -> str | None:
    """What `script_scorer` exports for this searcher ('tree node scorer'), or None."""
    return "tree node scorer" if isinstance(searcher, TreeSearcher) else None


def script_scorer(searcher: Searcher, histories: torch.Tensor, k: int, beam: int) -> bytes:
    """The TorchScript bytes of the searcher's scorer (CPU), checked on ``histories`` (B, 69):
    grove's beam search with the traced module returns the searcher's own top-k items."""
    if not isinstance(searcher, TreeSearcher):
        raise GroveError("only tree indexes (TDM, JTM) have a scripted scorer")
    module = _TreeScorer(searcher.scorer.cpu().eval())
    tree_nodes = torch.arange(1, min(searcher.tree.n_nodes, 4), dtype=torch.long)
    example = (_example_histories(searcher.n_items), tree_nodes.repeat(2, 1))
    with torch.inference_mode(), warnings.catch_warnings():
        # F.embedding's padding_idx check is a constant of the module, not of the input
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    data = buf.getvalue()
    _check(searcher, torch.jit.load(io.BytesIO(data)), histories.cpu().long(), k, beam)
    return data


def _example_histories(n_items: int) -> torch.Tensor:
    """(2, 69): one full history and one short one (the padding path traced too)."""
    gen = np.random.default_rng(0)
    full = gen.integers(0, n_items, MAX_BEHAVIOURS)
    short = np.full(MAX_BEHAVIOURS, -1)
    short[:3] = full[:3]
    return torch.as_tensor(np.stack([full, short]), dtype=torch.long)


def _check(searcher: TreeSearcher, traced: torch.jit.ScriptModule, hist: torch.Tensor, k: int, beam: int) -> None:
    b = hist.shape[0]

    def score(rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        grid = nodes.view(b, -1)
        grid = torch.where(grid == 0, grid.max(), grid)  # as `TreeSearcher` pads
        return traced(hist, grid).reshape(-1)

    with torch.inference_mode():
        _, want = searcher.search(hist, k, beam)
        _, got = beam_search(searcher.tt, score, b, k, beam)
    same = (want.cpu() == got.cpu()).all(dim=1)
    if not bool(same.all()):
        bad = int((~same).nonzero()[0])
        raise GroveError(
            f"the traced scorer's top-{k} differs from the version's for history {bad} of {b}: export refused"
        )
