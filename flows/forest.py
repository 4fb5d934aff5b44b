"""RecForest's construct with the trees of its forest built at once, as tasks of a flow run
submitted to its task runner (`grove.flows.ops.submit_construct`):

    embeddings (one task) -> tree 0 .. tree T-1 (a task each) -> write (one task: one version)

The parts are `grove.models.recforest.method`'s (`construct_embeddings`, `forest_tree`,
`assemble_forest`: their assembly is the version `lifecycle.construct`
writes, byte for byte); the version is written by `grove.models.lifecycle.write`. The embeddings
(n_items x d floats) and the trees go from task to task by value, through the runner (Ray's
object store, Dask's workers), not through the store. Training stays one task: the trees'
decoders share one encoder.
"""

from __future__ import annotations

import numpy as np
from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from grove.flows.tasks import seeded
from grove.indexstore.store import Store
from grove.models import lifecycle
from grove.models.recforest.method import RecForestConfig, assemble_forest, construct_embeddings, forest_tree


@task(name="forest embeddings", task_run_name="forest embeddings {dataset}", cache_policy=NONE)
def forest_embeddings_task(url: str, method: str, config: dict | None, dataset: str, split: str) -> np.ndarray:
    recipe = lifecycle.Recipe.new(method, config)
    with seeded():  # the two-tower pretraining seeds torch's global generator
        data = lifecycle.construct_data(Store.open(url), recipe, dataset, split)
        return construct_embeddings(_config(recipe), data, recipe.seed)


@task(name="forest tree", task_run_name="forest tree {t}", cache_policy=NONE)
def forest_tree_task(method: str, config: dict | None, embeddings, t: int):
    """Tree ``t`` of the forest; ``embeddings`` (n_items, d) as `forest_embeddings_task` made them."""
    recipe = lifecycle.Recipe.new(method, config)
    return forest_tree(_config(recipe), np.array(embeddings), recipe.seed, t)  # a writable copy


@task(name="forest write", task_run_name="write {index} (construct)", cache_policy=NONE)
def forest_write_task(
    url: str, index: str, method: str, config: dict | None, dataset: str, split: str, embeddings, forest_trees: list
) -> int:
    recipe = lifecycle.Recipe.new(method, config)
    built = assemble_forest(np.asarray(embeddings), list(forest_trees))
    return lifecycle.write(Store.open(url), index, recipe, built, dataset, split, None, _run_id()).id


def submit_forest_construct(
    url: str, index: str, method: str, config: dict | None, dataset: str, split: str, futures: list
):
    """Submit the construct of a RecForest version as T + 2 tasks (appended to ``futures``);
    returns the future of the version's id."""
    n_trees = _config(lifecycle.Recipe.new(method, config)).trees
    emb = forest_embeddings_task.submit(url, method, config, dataset, split)
    built = [forest_tree_task.submit(method, config, emb, t) for t in range(n_trees)]
    version = forest_write_task.submit(url, index, method, config, dataset, split, emb, built)
    futures += [emb, *built, version]
    return version


def _config(recipe: lifecycle.Recipe) -> RecForestConfig:
    if not isinstance(recipe.config, RecForestConfig):
        raise TypeError(f"a forest construct needs a RecForest recipe, got {recipe.method!r}")
    return recipe.config


def _run_id() -> str | None:
    rid = flow_run.get_id()
    return str(rid) if rid else None
