"""Adam whose cost per step does not grow with the catalogue.

Every model keeps one or two (N x d) tables of item (and node) embeddings. A batch touches a
few thousand of their rows, but a dense Adam step reads and writes all N rows and their two
moment buffers: at 10^6 items that is most of a training step's time. `EmbeddingAdam` gives the
tables built with ``nn.Embedding(..., sparse=True)`` to `torch.optim.SparseAdam` ("lazy" Adam:
only the rows the batch looked up, with their moments, are updated, as TensorFlow's LazyAdam
and the embedding optimisers of recommender systems do) and every other parameter to
`torch.optim.Adam`. Both share the learning rate and its decay.

The moment buffers of the tables stay dense (2 x N x d floats): memory O(N), time per step
O(rows touched). Among several data-parallel workers, `step` first averages the gradients over
them (`grove.models.distributed.average_gradients`), so every worker takes the same step.
"""

from __future__ import annotations

import torch
from torch import nn

from grove.models.distributed import average_gradients


def sparse_tables(module: nn.Module) -> list[torch.Tensor]:
    """The weights of ``module``'s embedding tables that produce sparse gradients."""
    return [m.weight for m in module.modules() if isinstance(m, nn.Embedding) and m.sparse]


class EmbeddingAdam:
    """`torch.optim.SparseAdam` on the sparse embedding tables, `torch.optim.Adam` on the rest.

    Parameters
    ----------
    params_of : the module whose trainable parameters are optimised.
    lr : learning rate of both.
    """

    def __init__(self, params_of: nn.Module, lr: float):
        tables = sparse_tables(params_of)
        ids = {id(p) for p in tables}
        dense = [p for p in params_of.parameters() if id(p) not in ids]
        self.dense, self.tables = dense, tables
        self.optimizers: list[torch.optim.Optimizer] = []
        if dense:
            self.optimizers.append(torch.optim.Adam(dense, lr=lr))
        if tables:
            self.optimizers.append(torch.optim.SparseAdam(tables, lr=lr))

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        average_gradients(self.dense, self.tables)
        for opt in self.optimizers:
            opt.step()

    def decay(self, gamma: float) -> None:
        """Multiply the learning rate by ``gamma`` (what `ExponentialLR.step` does per epoch)."""
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] *= gamma
