"""Training windows on the training device, gathered per batch.

`grove.indexstore.samples.TrainingSamples` keeps its windows as slices of one int32 sequence (O(n)
memory instead of an (n, 69) array). `DeviceWindows` puts that sequence and the kept samples'
starts and targets on the device once and builds each batch's (b, 69) behaviours with one
gather, so no step copies from the host and memory stays O(interactions + samples).
"""

from __future__ import annotations

import numpy as np
import torch

from grove.indexstore.samples import MAX_BEHAVIOURS, TrainingSamples


class DeviceWindows:
    """The samples ``keep`` (all when None) of ``samples`` on ``device``.

    Attributes
    ----------
    targets : (n,) long target items of the kept samples, in ``keep`` order.
    """

    def __init__(self, samples: TrainingSamples, device: torch.device | str, keep: np.ndarray | None = None):
        starts = samples.starts if keep is None else samples.starts[keep]
        targets = samples.targets if keep is None else samples.targets[keep]
        self.sequence = torch.as_tensor(samples.sequence, device=device)  # (M,) int32
        self.starts = torch.as_tensor(np.asarray(starts, dtype=np.int64), device=device)  # (n,)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=device)
        self.offsets = torch.arange(MAX_BEHAVIOURS, device=device)  # (69,)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def behaviours(self, idx: torch.Tensor) -> torch.Tensor:
        """(b, 69) long behaviours (nearest first, -1 padded) of kept samples ``idx`` (b,)."""
        return self.sequence[self.starts[idx].unsqueeze(1) + self.offsets].long()
