"""Training of `DRNet` for a fixed path assignment (the θ step of Algorithm 1, with §3.3 multi-task).

Objective per mini-batch: the multi-path structure loss -log sum_j p(pi_j(y)|x) (Eq. 3) plus the
softmax cross-entropy (Q = Q_str + Q_softmax, §3.3), through one shared GRU encoder.

Schedule (§4.1: "train the embeddings of DR and softmax jointly for the initial two epochs,
freeze the embeddings of softmax and train the embeddings of DR for two more epochs"): the
softmax head (item embeddings, bias, projection) learns during the first ``joint_epochs`` epochs
of the weights' life (counted across warm-started `train` calls, stored as ``epochs_done``), and
is frozen afterwards. We keep the softmax loss after freezing, so its gradient still reaches the
shared encoder: otherwise the encoder would drift under the structure loss alone and the frozen
reranker would score a user embedding it was never trained on.
"""

from __future__ import annotations

import torch

from grove.indexstore.samples import TrainingSamples
from grove.indexstore.structures import PathCodes
from grove.models.distributed import all_reduce_sum_, batches, epoch_order, worker_generator
from grove.models.dr.network import DRNet
from grove.models.optim import EmbeddingAdam
from grove.models.progress import Progress
from grove.models.windows import DeviceWindows


def train_epochs(
    net: DRNet,
    codes: PathCodes,
    samples: TrainingSamples,
    *,
    epochs: int,
    joint_epochs: int,
    epochs_done: int,
    batch_size: int,
    lr: float,
    softmax_samples: int,
    seed: int,
    device: torch.device,
) -> list[dict[str, float]]:
    """Train ``net`` in place for ``epochs`` epochs over the samples.

    Parameters
    ----------
    codes : current assignment (n_items, J, D); samples : the training windows and targets;
    epochs_done : epochs the weights already had (for the freeze schedule).

    Returns
    -------
    One dict per epoch: mean structure loss ``str``, mean softmax loss ``softmax``, ``frozen``.
    """
    dev_gen = worker_generator(seed, device) if softmax_samples > 0 else None
    item_codes = torch.tensor(codes.codes, dtype=torch.long, device=device)  # (V, J, D)
    data = DeviceWindows(samples, device)
    opt = EmbeddingAdam(net, lr=lr)
    n = len(data)
    history = []
    net.train()
    with Progress("dr training", total=epochs * ((n + batch_size - 1) // batch_size), unit="batch") as prog:
        for epoch in range(epochs):
            frozen = epochs_done + epoch >= joint_epochs
            net.softmax.requires_grad_(not frozen)
            sums = torch.zeros(2, device=device)  # summed on device: no sync per step
            for idx in batches(epoch_order(n, seed, epochs_done + epoch, device), batch_size):
                u = net.encode(data.behaviours(idx))  # (b, dim)
                y = data.targets[idx]
                l_str = net.structure.multipath_loss(u, item_codes[y])
                l_sm = net.softmax.loss(u, y, softmax_samples, dev_gen)
                opt.zero_grad()
                (l_str + l_sm).backward()
                opt.step()
                sums += torch.stack([l_str.detach(), l_sm.detach()]) * idx.shape[0]
                prog.update(1)
            mean = (all_reduce_sum_(sums) / max(n, 1)).tolist()  # every worker's part of the epoch
            history.append({"str": mean[0], "softmax": mean[1], "frozen": frozen})
    net.softmax.requires_grad_(True)
    net.eval()
    return history
