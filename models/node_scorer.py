"""TDM's attention-DNN node scorer (TDM, KDD 2018, Figure 2).

The scorer gives the logit of p(user likes node) for (user, tree node) pairs. One network
serves every level of the tree ("one global deep neural network binary model with different
input for all levels").

Embedding layout
----------------
One table ``emb`` holds every embedding, items and nodes alike:

    rows [0, n_items)                      item i  (== the embedding of every leaf holding i)
    rows [n_items, n_items + n_internal)   internal nodes, in breadth-first node order
    row  n_items + n_internal              padding (zeros, never trained)

so "item and leaf node share an embedding" holds by construction, and a behaviour (an item)
and a candidate node are looked up in the same space. ``node_row`` (M,) maps tree nodes to rows.
When the tree changes only the internal rows change meaning (see `transfer_weights`).

Network
-------
* Behaviours (U, 69) nearest first, -1 padded, fall into 10 time windows of sizes
  ``WINDOWS = [1, 1, 1, 2, 2, 2, 10, 10, 20, 20]`` (columns 0, 1, 2, 3-4, 5-6, ...).
* Activation unit (DIN style): per (behaviour b, node n) an MLP over ``[b, b ⊙ n, n]``
  (3d -> 36 PReLU -> 1) gives a weight w. The first layer is applied as three terms,
  ``b @ Wb^T`` once per user, ``n @ Wn^T`` once per node and ``(b ⊙ n) @ Wp^T`` as one GEMM, so
  the (P, 69, 3d) concatenation is never built, and a user's (69, d) behaviour embeddings are
  looked up once and shared by its C candidate nodes.
* Window vector = sum_i w_i b_i / (number of non-padding behaviours in the window); an empty
  window gives zeros. Choice: TDM says "weighted averaged" without saying how weights are
  normalised. A softmax inside a window would make the three one-behaviour windows ignore the
  attention entirely, so we keep DIN's raw weights and divide by the count.
* [10 window vectors, node embedding] (11d) -> Linear-BN-PReLU 128 -> 64 -> 24 -> Linear 1.
  The paper's "binary softmax" over 2 outputs is equivalent to one logit with a sigmoid.

Networks (``network``, ``batch_norm``)
---------------------------------------
* ``"attention"``: the activation unit above (TDM's "attention-DNN", Figure 2; DeFoRec's
  Figure 1). With ``batch_norm`` the MLP is Linear-BN-PReLU (TDM; DeFoRec §3.1: "batch
  normalization is applied to the MLP").
* ``"average"``: no activation unit; every behaviour weighs 1, so a window vector is the
  element-wise average of its behaviours (TDM's "TDM DNN" variant, §5.3, "only removes the
  activation unit"; JTM's network, supplement B, whose MLP is "three fully-connected layers, with
  128, 64 and 24 hidden units ... PReLU", no batch norm: ``batch_norm=False``). Its window
  vectors depend on the user (and, for JTM, the level) only, so they are computed once per
  user and shared by the user's C nodes.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from grove.indexstore.samples import MAX_BEHAVIOURS
from grove.indexstore.structures import Tree

WINDOWS = (1, 1, 1, 2, 2, 2, 10, 10, 20, 20)
NETWORKS = ("attention", "average")


def window_matrix(width: int = MAX_BEHAVIOURS, windows=WINDOWS) -> torch.Tensor:
    """(width, n_windows) float one-hot: column j of the history belongs to window w."""
    if sum(windows) < width:
        raise ValueError(f"the windows {windows} cover {sum(windows)} behaviours, fewer than {width}")
    ids = np.repeat(np.arange(len(windows)), windows)[:width]
    out = torch.zeros(width, len(windows))
    out[torch.arange(width), torch.as_tensor(ids)] = 1.0
    return out


def node_rows_for(tree: Tree) -> tuple[np.ndarray, int]:
    """Embedding row of every node of ``tree`` in the layout above.

    Returns
    -------
    node_row : (M,) int64 -- item id for leaves, n_items + rank among internal nodes otherwise.
    n_internal : int
    """
    internal = ~tree.is_leaf
    row = np.empty(tree.n_nodes, dtype=np.int64)
    row[tree.is_leaf] = tree.item[tree.is_leaf]
    row[internal] = tree.n_items + np.arange(int(internal.sum()))
    return row, int(internal.sum())


class _PReLU(nn.Module):
    """PReLU with one slope per feature of the LAST dimension (nn.PReLU uses dim 1)."""

    def __init__(self, n: int):
        super().__init__()
        self.slope = nn.Parameter(torch.full((n,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's fused prelu kernel wants the channel at dim 1: move the last dim there (a view)
        if x.dim() < 2:
            return torch.where(x >= 0, x, x * self.slope)
        return nn.functional.prelu(x.movedim(-1, 1), self.slope).movedim(1, -1)


class TDMScorer(nn.Module):
    """p(node | user) logits for a fixed tree.

    Parameters
    ----------
    tree : the tree whose nodes are scored (its node -> row map is kept as buffers).
    dim : embedding size d (24 in the papers).
    hidden : sizes of the MLP after the concatenation (128, 64, 24).
    act_hidden : hidden size of the activation unit (36 in Figure 2).
    batch_norm : Linear-BN-PReLU (TDM) or Linear-PReLU (JTM's plain DNN).
    network : 'attention' (the activation unit weighs each behaviour) or 'average' (no
        activation unit: plain window averages; module docstring).
    """

    # buffers derived from the tree (not learnt; `register_buffer` below)
    node_row: torch.Tensor  # (M,) embedding row of every node
    node_level: torch.Tensor  # (M,) level of every node
    windows: torch.Tensor  # (69, 10) one-hot time windows

    def __init__(
        self,
        tree: Tree,
        dim: int = 24,
        hidden=(128, 64, 24),
        act_hidden: int = 36,
        batch_norm: bool = True,
        network: str = "attention",
    ):
        super().__init__()
        if network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
        self.network = network
        node_row, n_internal = node_rows_for(tree)
        self.n_items, self.n_internal, self.dim = tree.n_items, n_internal, dim
        self.pad_row = tree.n_items + n_internal
        # sparse gradients: a step updates only the rows its batch looked up (`grove.models.optim`)
        self.emb = nn.Embedding(self.pad_row + 1, dim, padding_idx=self.pad_row, sparse=True)
        nn.init.normal_(self.emb.weight, std=0.1)
        with torch.no_grad():
            self.emb.weight[self.pad_row].zero_()
        # derived from the tree, not learnt: not saved in the state dict
        self.register_buffer("node_row", torch.as_tensor(node_row), persistent=False)
        self.register_buffer("node_level", torch.as_tensor(tree.level.astype(np.int64)), persistent=False)
        self.register_buffer("windows", window_matrix(), persistent=False)  # (69, 10)
        # the activation unit ('attention' only: an 'average' scorer has no such parameters)
        attention = network == "attention"
        self.act_in = nn.Linear(3 * dim, act_hidden) if attention else None
        self.act_prelu = _PReLU(act_hidden) if attention else None
        self.act_out = nn.Linear(act_hidden, 1) if attention else None
        # floats per (user, node, behaviour) of a level's scoring: the activation unit's hidden
        # layer or the behaviour embedding (the unit chunk sizes are counted in)
        self.act_width = max(act_hidden if attention else 0, dim)
        layers, width = [], (len(WINDOWS) + 1) * dim
        for h in hidden:
            layers += [nn.Linear(width, h)] + ([nn.BatchNorm1d(h)] if batch_norm else []) + [nn.PReLU(h)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def in_precision(self, dtype: torch.dtype) -> TDMScorer:
        """This scorer for searches in ``dtype``: itself for float32, else a copy whose
        activation unit is cast (`cast_activation`)."""
        if dtype == torch.float32:
            return self
        twin = copy.deepcopy(self)
        twin.cast_activation(dtype)
        return twin

    def cast_activation(self, dtype: torch.dtype) -> None:
        """Cast the embeddings and the activation unit (and its window matrix) to ``dtype``,
        keeping the MLP after the concatenation in its own dtype: the activation unit's
        (U, C, L, 36) intermediates are what a search moves, while the MLP sees (U * C, 11d)
        rows and, kept in float32, does not round the logits that rank the candidates."""
        for part in (self.emb, self.act_in, self.act_prelu, self.act_out):
            if part is not None:
                part.to(dtype)
        self.windows = self.windows.to(dtype)

    # ------------------------------------------------------------------------------- lookups
    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        """Item ids (any shape; -1 or out of range = padding) -> embedding rows."""
        ok = (items >= 0) & (items < self.n_items)
        return torch.where(ok, items, torch.full_like(items, self.pad_row))

    def node_rows(self, nodes: torch.Tensor) -> torch.Tensor:
        """Tree nodes (any shape; -1 = none) -> embedding rows (pad row for -1)."""
        rows = self.node_row[nodes.clamp(min=0)]
        return torch.where(nodes >= 0, rows, torch.full_like(rows, self.pad_row))

    def behaviour_rows(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Rows of the behaviours used to score ``nodes`` (U, C): TDM uses the items themselves,
        shared by all C nodes of a user -> (U, L). `grove.models.jtm.hierarchical.HierarchicalScorer` overrides this."""
        return self.item_rows(histories)

    def static_behaviour_rows(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """`behaviour_rows` without branches on the data, so that a trace of it holds for every
        input (TDM's has none; JTM's overrides this)."""
        return self.behaviour_rows(histories, nodes)

    def item_embeddings(self) -> torch.Tensor:
        """(n_items, d): the learnt item (= leaf) embeddings, for k-means tree relearning."""
        return self.emb.weight[: self.n_items]

    # ------------------------------------------------------------------------------- forward
    # Training on CPU runs the activation unit in user chunks of ~2**20 floats per (chunk, C, L, h)
    # intermediate under activation checkpointing: each chunk's forward and (recomputed) backward
    # stay near the caches instead of streaming several (U, C, L, h) tensors through memory
    # (faster on CPU, same gradients: `benchmarks.train_speed`, benchmarks/README.md). Off on CUDA,
    # whose memory bandwidth makes the one-piece pass cheap.
    train_chunk_elements: int = 1 << 20
    # `score`'s chunk bound when its caller passes none; None: `default_chunk_elements` of the
    # device (benchmarks set it on an instance to time other bounds through the same searcher)
    score_chunk_elements: int | None = None

    def forward_rows(self, beh_rows: torch.Tensor, node_rows: torch.Tensor) -> torch.Tensor:
        """Logits for rows of the embedding table.

        Parameters
        ----------
        beh_rows : (U, L) long -- behaviours shared by the C nodes of a user -- or (U, C, L).
        node_rows : (U, C) long.

        Returns
        -------
        (U, C) float logits.
        """
        e_n = self.emb(node_rows)  # (U, C, d)
        shared = beh_rows.dim() == 2
        e_b = self.emb(beh_rows.unsqueeze(1) if shared else beh_rows)  # (U, 1|C, L, d)
        valid = (beh_rows != self.pad_row).unsqueeze(1) if shared else beh_rows != self.pad_row
        win = self.windows[: beh_rows.shape[-1]]  # (L, 10)
        u, c = node_rows.shape
        per_user = c * beh_rows.shape[-1] * self.act_width
        if torch.is_grad_enabled() and not e_n.is_cuda and u * per_user > self.train_chunk_elements:
            # split, not slices: a slice's backward fills a full-size zero gradient per chunk
            # (ruinous for JTM's (U, C, L, d) behaviours); split's backward is one cat
            step = max(1, self.train_chunk_elements // per_user)
            vec = torch.cat(
                [
                    checkpoint(
                        self._window_vectors, b, n, v, win, use_reentrant=False, preserve_rng_state=False
                    )  # nothing random inside
                    for b, n, v in zip(e_b.split(step), e_n.split(step), valid.split(step))
                ]
            )
        else:
            vec = self._window_vectors(e_b, e_n, valid, win)
        x = torch.cat([vec.flatten(2).expand(u, c, -1), e_n], dim=-1)  # (U, C, 11d)
        x = x.to(next(self.mlp.parameters()).dtype)  # float32 after a reduced-precision activation unit
        return self.mlp(x.reshape(u * c, -1)).view(u, c)

    def _window_vectors(
        self, e_b: torch.Tensor, e_n: torch.Tensor, valid: torch.Tensor, win: torch.Tensor
    ) -> torch.Tensor:
        """The activation unit and the window averages.

        e_b (U, 1|C, L, d) behaviour embeddings, e_n (U, C, d) node embeddings, valid (U, 1|C, L)
        bool (not padding), win (L, 10) one-hot windows -> (U, C, 10, d) window vectors
        ((U, 1, 10, d) for an 'average' scorer whose C nodes share the behaviours)."""
        if self.act_in is None or self.act_prelu is None or self.act_out is None:
            return self._window_averages(e_b, valid, win)
        d = self.dim
        w_b, w_p, w_n = self.act_in.weight.split(d, dim=1)  # each (h, d)
        # first layer of the activation unit, [b, b*n, n] @ W^T + bias, as three terms:
        #   b @ Wb^T (U, 1|C, L, h) once per user, n @ Wn^T + bias (U, C, 1, h) once per node,
        #   (b*n) @ Wp^T as ONE large GEMM over all (U*C*L, d) rows (small batched products
        #   per pair are several times slower on CPU); the (U, C, L, 3d) concat is never built.
        per_beh = e_b @ w_b.T  # (U, 1|C, L, h)
        per_node = (e_n @ w_n.T + self.act_in.bias).unsqueeze(2)  # (U, C, 1, h)
        cross = (e_b * e_n.unsqueeze(2)) @ w_p.T  # (U, C, L, h)
        hid = cross + per_beh + per_node  # (U, C, L, h)
        act = self.act_prelu(hid)
        if torch.compiler.is_compiling():
            # the 36 -> 1 layer as a multiply-sum: torch.compile fuses it with the adds and the
            # PReLU above into one pass over `hid` (a matrix product would be a separate kernel)
            att = (act * self.act_out.weight[0]).sum(-1) + self.act_out.bias[0]  # (U, C, L)
        else:
            att = self.act_out(act).squeeze(-1)  # (U, C, L)
        att = att * valid
        # window sums sum_l att_l * [l in w] * b_l without building (U, C, L, d)
        weights = (att.unsqueeze(-1) * win).transpose(-1, -2)  # (U, C, 10, L)
        if e_b.shape[1] == 1:
            # behaviours shared by the C nodes: one (C*10, L) @ (L, d) product per user; a
            # broadcast (U, C, 10, L) @ (U, 1, L, d) would copy each user's (L, d) C times
            u, c, n_win, length = weights.shape
            sums = (weights.reshape(u, c * n_win, length) @ e_b[:, 0]).view(u, c, n_win, -1)  # (U, C, 10, d)
        else:
            sums = weights @ e_b  # (U, C, 10, d)
        counts = valid.to(att.dtype) @ win  # (U, 1|C, 10)
        return sums / counts.clamp(min=1.0).unsqueeze(-1)  # (U, C, 10, d)

    @staticmethod
    def _window_averages(e_b: torch.Tensor, valid: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
        """The 'average' network's window vectors: e_b (U, 1|C, L, d), valid (U, 1|C, L) ->
        (U, 1|C, 10, d), the mean of each window's behaviours (zeros for an empty window)."""
        mask = valid.to(e_b.dtype)  # (U, 1|C, L)
        sums = (mask.unsqueeze(-1) * win).transpose(-1, -2) @ e_b  # (U, 1|C, 10, d)
        return sums / (mask @ win).clamp(min=1.0).unsqueeze(-1)

    def forward(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Logits (U, C) for histories (U, L) item ids (nearest first, -1 padded) and tree
        nodes (U, C). Behaviours of a user are shared by its C candidate nodes."""
        return self.forward_trimmed(trim_padding(histories), nodes)

    def forward_trimmed(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """`forward` of histories already passed through `trim_padding` (a search trims its
        batch once, not once per level: each trim is a host sync)."""
        return self.forward_rows(self.behaviour_rows(histories, nodes), self.node_rows(nodes))

    def forward_static(self, histories: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """`forward` with no shape or branch taken from the data (no padding trim, JTM's
        behaviours mapped per node): the same logits, and what `grove.models.scripted` traces."""
        return self.forward_rows(self.static_behaviour_rows(histories, nodes), self.node_rows(nodes))

    def score(
        self,
        histories: torch.Tensor,
        nodes: torch.Tensor,
        max_elements: int | None = None,
        forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``forward`` (default `forward`) in user chunks so that no intermediate exceeds
        ~``max_elements`` floats (U * C * L * 36); for inference (eval mode, so chunking does not
        change results). A search passes `forward_trimmed` or a compiled `forward_static`."""
        forward = forward or self
        # default chunk: ~2**20 floats on CPU (the (chunk, C, L, 36) activations stay near the
        # caches); on CUDA as large as memory allows (`cuda_chunk_elements`)
        if max_elements is None:
            max_elements = self.score_chunk_elements or default_chunk_elements(histories.device)
        u, c = nodes.shape
        per_user = max(1, c * histories.shape[1] * self.act_width)
        step = max(1, max_elements // per_user)
        if step >= u:
            return forward(histories, nodes)
        return torch.cat([forward(histories[i : i + step], nodes[i : i + step]) for i in range(0, u, step)])


def default_chunk_elements(device: torch.device | str) -> int:
    """Floats per (chunk, C, L, 36) activation intermediate when scoring without gradients in
    chunks (`TDMScorer.score`, JTM's and DeFoRec's tree relearning): 2**20 on the CPU, where
    small chunks stay near the caches (`benchmarks.scale`, `benchmarks.relearn_chunks`), and
    `cuda_chunk_elements` on a GPU, where each chunk's launches and host sync are the cost."""
    device = torch.device(device)
    return cuda_chunk_elements(device) if device.type == "cuda" else 1 << 20


@functools.cache
def cuda_chunk_elements(device: torch.device) -> int:
    """`TDMScorer.score`'s chunk bound on a GPU: 2**28 floats per (chunk, C, L, 36) intermediate
    (1 GiB; a 1,024-user batch of a beam-50 binary tree is then one piece per level), or 1/64 of
    the device's memory where that is less (a handful of such intermediates are alive at once).

    Each chunk costs ~20 kernel launches that the GPU waits for (and, outside a search, which
    trims its batch once, a host sync in `trim_padding`), so small chunks leave it idle (the
    chunk sweep of `benchmarks.gpu_profile`, in benchmarks/README.md; the top-k items are the
    same at every size). Cached per device: `score` asks once per level."""
    total = torch.cuda.get_device_properties(device).total_memory
    return int(min(1 << 28, max(1 << 20, total // (4 * 64))))


def trim_padding(histories: torch.Tensor) -> torch.Tensor:
    """Drop the trailing columns that are padding for every row of the batch.

    Histories are nearest first and padded at the end, so the columns after the longest
    history carry nothing; the attention cost is linear in the width (U * C * L * 36), and
    dropping them leaves every logit unchanged (padding is masked out of the window sums and
    counts). Costs one host sync per call."""
    if histories.shape[1] == 0:
        return histories
    filled = (histories >= 0).any(dim=0)  # (L,)
    width = int(filled.nonzero().max()) + 1 if bool(filled.any()) else 1
    return histories[:, :width]


def transfer_weights(new: TDMScorer, old_state: dict, old_tree: Tree, new_tree: Tree, keep_nodes_by_path: bool) -> None:
    """Warm-start ``new`` (built for ``new_tree``) from a state trained for ``old_tree``.

    Item rows, the activation unit and the MLP (with its batch-norm statistics) are copied.
    Internal-node rows are copied from the old node with the same K-way path code when
    ``keep_nodes_by_path`` (JTM: tree learning keeps positions, so a position's embedding stays
    meaningful); otherwise (TDM after k-means: positions mean something new) they keep their
    fresh random initialisation.
    """
    own = new.state_dict()
    for name, value in old_state.items():
        if name != "emb.weight" and name in own and own[name].shape == value.shape:
            own[name] = value.clone()
    emb_new, emb_old = own["emb.weight"], old_state["emb.weight"].to(own["emb.weight"].device)
    n = new.n_items
    emb_new[:n] = emb_old[:n]
    if keep_nodes_by_path and old_tree.arity == new_tree.arity:
        old_int, new_int = np.flatnonzero(~old_tree.is_leaf), np.flatnonzero(~new_tree.is_leaf)
        _, i_old, i_new = np.intersect1d(
            position_keys(old_tree)[old_int], position_keys(new_tree)[new_int], assume_unique=True, return_indices=True
        )
        src = torch.as_tensor(node_rows_for(old_tree)[0][old_int[i_old]], device=emb_new.device)
        dst = torch.as_tensor(node_rows_for(new_tree)[0][new_int[i_new]], device=emb_new.device)
        emb_new[dst] = emb_old[src]
    new.load_state_dict(own)


def position_keys(tree: Tree) -> np.ndarray:
    """(M,) int64: every node's breadth-first index in the COMPLETE K-ary tree (the root is 0,
    the children of position p are p*K+1 .. p*K+K). Two trees' nodes with equal keys have the
    same K-way path code. Needs K**depth < 2**62."""
    k = tree.arity
    if tree.depth * np.log2(max(k, 2)) >= 62:
        raise ValueError(f"tree too deep for int64 position keys: depth {tree.depth}, K={k}")
    key = np.zeros(tree.n_nodes, dtype=np.int64)
    bounds = np.searchsorted(tree.level, np.arange(tree.depth + 2))
    for lv in range(1, tree.depth + 1):  # one vectorised step per level; parents come first
        nodes = np.arange(bounds[lv], bounds[lv + 1])
        key[nodes] = key[tree.parent[nodes]] * k + 1 + tree.child_index[nodes]
    return key
