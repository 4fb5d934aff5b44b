"""Quality benchmark: every method against the two-tower brute force and Item-CF (issues 3, 4, 5, 7).

    python -m benchmarks.quality                                   # ml-1m-subset, seeds 0 1 2
    python -m benchmarks.quality --dataset ml-latest-small --seeds 0 1 2 --device auto
    python -m benchmarks.quality --dataset ml-1m-subset ml-latest-small --jobs 6   # parallel seeds
    python -m benchmarks.quality --quick                           # seconds-long smoke run
    python -m benchmarks.quality --merge A.json B.json --tag T     # one run's seeds, run apart
    python -m benchmarks.quality --combine A.json B.json --tag T   # runs of other methods/budgets: one table

For each dataset and seed: the ratings (and the genre file, for TDM's category tree) are imported
into a temporary DuckDB store (`grove.flows.datasets.import_file`), split with the protocol
(`grove.flows.datasets.split_dataset`, split seed = the run's seed: the spread over seeds covers both
the user split and the model initialisation) and loaded as `SplitData` (`Store.load_split`).
Without the store's packages (duckdb, sqlalchemy, alembic) the same readers and protocol
functions are called directly; the JSON says which path ran (``data_path``).
Every method then runs its lifecycle in-process (no Prefect) through `grove.models.lifecycle` (`build`,
`advance`: the seeds every version gets, `Recipe.seed`):

* TDM: category tree -> train ("initial tree"); k-means relearn -> train ("1 relearn").
* JTM: category tree -> train; 2 x (tree learning -> train): "initial", "1 relearn", "2 relearns".
* DeFoRec: category tree -> train = 1 tree; ``--deforec-rounds`` - 1 times (tree learning, append,
  train): the forest of every round, plus the last round's tree alone.
* RecForest: 4 trees built once over the two-tower item embeddings; the network trained for the
  first 1, 2 and 4 trees.
* DR: J = 1 and J = 3: random codes -> train, ``--dr-em`` x (E+M step -> train).
  DR's brute force (its softmax model over every item) is the ``exhaustive`` reference.
* Two-tower (exact top-k over all items) and Item-CF.

Evaluation (PROTOCOL.md): the split's test users, P/R/F/NDCG/Novelty @10, @20, @50, seen items
kept (main table) and filtered; each index at beams 20/50/100 (``--beams``) with fidelity =
recall(beam) / recall(same model scoring every item). Training samples/s = samples processed by
`train` (epochs x windows) / wall seconds of the call (on the training device). Search speed:
users/s of the evaluation on the evaluation device (whole test set, batches of 256), and, for the
first seed, users/s on the CPU at batch 256 with ``--cpu-threads`` threads (median of
``--speed-repeats`` runs after a warm-up, exhaustive scoring too), for the final model of
each lifecycle only (search cost depends on the index size, not on the training round).

Configs (full run; ``--quick`` caps everything, see QUICK) are in CONFIGS below and in the JSON.
They were chosen to converge on ml-1m-subset within the GPU budget: training loss flattens
after 3-4 epochs for the tree scorers and two-tower; DR gets the paper's 2 joint + 2 frozen
epochs and 3 EM rounds of 2 further epochs each.

Outputs ``benchmarks/results/quality_<dataset>.json`` (every seed's raw metrics, the
aggregates mean/std, configs, machine) and ``quality_<dataset>.md`` (tables, mean ± std).
"""

from __future__ import annotations

from benchmarks.quality.cli import apply_override, main
from benchmarks.quality.data import find_data_dir, load_data, target_coverage
from benchmarks.quality.merge import aggregate, combine_results, merge_results
from benchmarks.quality.report import markdown
from benchmarks.quality.settings import CONFIGS, DATASETS, KS, LIFECYCLE, METHODS, QUICK, QUICK_LIFECYCLE, RESULTS, ROOT

__all__ = [
    "CONFIGS",
    "DATASETS",
    "KS",
    "LIFECYCLE",
    "METHODS",
    "QUICK",
    "QUICK_LIFECYCLE",
    "RESULTS",
    "ROOT",
    "aggregate",
    "apply_override",
    "combine_results",
    "find_data_dir",
    "load_data",
    "main",
    "markdown",
    "merge_results",
    "target_coverage",
]
