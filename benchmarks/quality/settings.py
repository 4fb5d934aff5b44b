"""What the quality benchmark runs: the datasets, the cut-offs, every method's config at its full
size (``CONFIGS``), the lifecycle steps (``LIFECYCLE``) and the caps of a ``--quick`` run."""

from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DATA_DIRS = [ROOT.parent / "shared" / "datasets", ROOT / ".devcarry" / "quality" / "datasets"]

DATASETS = {
    "ml-1m-subset": ("ratings_users0001-2999.dat.gz", "movies.dat"),
    "ml-latest-small": ("ratings.csv", "movies.csv"),
}
KS = (10, 20, 50)
METHODS = ("tdm", "jtm", "deforec", "recforest", "dr", "two_tower", "itemcf")

# method -> config values (the method's frozen dataclass fields); "device" is set from --device.
CONFIGS: dict[str, dict] = {
    "tdm": {"arity": 2, "epochs": 4, "batch_size": 256, "lr": 1e-3, "lr_decay": 0.9, "kmeans_iters": 10},
    "jtm": {"arity": 2, "epochs": 4, "batch_size": 256, "lr": 1e-3, "lr_decay": 0.9, "gap": 7, "tree_samples": 100_000},
    "deforec": {
        "arity": 2,
        "negatives": 40,
        "gap": 7,
        "epochs": 3,
        "batch_size": 128,
        "lr": 1e-3,
        "lr_decay": 0.9,
        "tree_samples": 100_000,
    },
    "recforest": {
        "arity": 18,
        "trees": 4,
        "hidden": 96,
        "epochs": 3,
        "batch_size": 256,
        "lr": 1e-3,
        "embeddings": "two_tower",
        "pretrain_epochs": 4,
    },
    "dr": {
        "arity": 50,
        "depth": 3,
        "epochs": 4,
        "joint_epochs": 2,
        "batch_size": 256,
        "lr": 1e-3,
        "alpha": 3e-3,
        "estep_beam": 100,
        "estep_pool": 100,
        "mstep_iters": 4,
    },  # benchmarks.dr's operating point
    "two_tower": {"dim": 24, "epochs": 4, "negatives": 100, "batch_size": 256, "lr": 1e-3},
    "itemcf": {"neighbours": 100},
}
LIFECYCLE = {
    "deforec_rounds": 3,
    "recforest_trees": (1, 2, 4),
    "dr_paths": (1, 3),
    "dr_em_rounds": 3,
    "dr_em_epochs": 2,
    "jtm_relearns": 2,
}
# --quick: tiny caps so that a run takes a minute or two (numbers are meaningless)
QUICK = {
    "tdm": {"epochs": 1, "max_samples": 4000},
    "jtm": {"epochs": 1, "max_samples": 4000, "tree_samples": 4000},
    "deforec": {"epochs": 1, "max_samples": 4000, "tree_samples": 4000},
    "recforest": {"epochs": 1, "max_steps": 15, "pretrain_max_steps": 15},
    "dr": {"epochs": 1, "joint_epochs": 1, "max_samples": 4000},
    "two_tower": {"epochs": 1, "max_steps": 20},
    "itemcf": {},
}
QUICK_LIFECYCLE = {
    "deforec_rounds": 2,
    "recforest_trees": (1, 2),
    "dr_paths": (1, 3),
    "dr_em_rounds": 1,
    "dr_em_epochs": 1,
    "jtm_relearns": 1,
}
