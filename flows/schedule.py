"""``grove schedule``: the `retrain` flow served as a Prefect deployment on a cron schedule.

`serve_retrain` serves `grove.flows.prefect_flows.retrain_flow` (several indexes:
``retrain_indexes_flow``) on a real Prefect server (PREFECT_API_URL must point at ``prefect
server start``), with a task runner when one is given (`grove.flows.runners`: every scheduled run
submits its steps to it); `check_cron` refuses an invalid cron line and `prefect_api_url` an
absent server before anything starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from grove.flows.runners import RunnerSpec, absolute_url, with_task_runner
from grove.indexstore.errors import GroveError


def check_cron(expr: str) -> str:
    """``expr`` when it is a valid 5-field cron line; a GroveError naming the problem otherwise."""
    from cronsim import CronSim, CronSimError

    text = (expr or "").strip()
    if len(text.split()) != 5:
        raise GroveError(
            f"invalid cron expression {expr!r}: expected 5 fields "
            '(minute hour day-of-month month day-of-week), e.g. "0 3 * * *"'
        )
    try:
        next(CronSim(text, datetime.now()))
    except (CronSimError, StopIteration) as exc:
        raise GroveError(f"invalid cron expression {expr!r}: {exc}") from None
    return text


def prefect_api_url() -> str:
    """The Prefect API the deployment goes to; a GroveError when none is configured or reachable."""
    from prefect.settings import PREFECT_API_URL

    api = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not api:
        raise GroveError(
            "grove schedule needs a Prefect server: run `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    import httpx

    try:
        httpx.get(api.rstrip("/") + "/health", timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise GroveError(
            f"the Prefect server at PREFECT_API_URL={api} does not answer ({exc}); is `prefect server start` running?"
        ) from None
    return api


def deployment_name(index: str | Sequence[str]) -> str:
    """``retrain-INDEX``; several indexes: ``retrain-A+B``."""
    return "retrain-" + (index if isinstance(index, str) else "+".join(index))


def retrain_deployment(
    url: str, index: str | Sequence[str], parameters: dict, runner: RunnerSpec | None = None
) -> tuple[Any, dict]:
    """The flow a retrain deployment serves and its parameters: `retrain_flow` for one index,
    ``retrain_indexes_flow`` for several; with ``runner``, its task runner and concurrent steps."""
    from grove.flows.prefect_flows import retrain_flow, retrain_indexes_flow

    indexes = [index] if isinstance(index, str) else list(index)
    params: dict[str, Any] = {"url": absolute_url(url), **parameters}
    if runner is not None:
        params["concurrent"] = True
    if len(indexes) == 1:
        return with_task_runner(retrain_flow, runner), {**params, "index": indexes[0]}
    return with_task_runner(retrain_indexes_flow, runner), {**params, "indexes": indexes}


def serve_retrain(
    url: str,
    index: str | Sequence[str],
    cron: str,
    parameters: dict,
    name: str | None = None,
    runner: RunnerSpec | None = None,
) -> None:
    """Serve the retrain of ``index`` (or of several) on ``cron`` (blocks until interrupted)."""
    flow, params = retrain_deployment(url, index, parameters, runner)
    what = f"index {index!r}" if isinstance(index, str) else f"indexes {', '.join(index)}"
    on = f" on a {runner.describe()} task runner" if runner is not None else ""
    flow.serve(
        name=name or deployment_name(index),
        cron=check_cron(cron),
        parameters=params,
        description=f"scheduled retraining of {what}{on}",
    )
