"""``grove schedule``: the `retrain` flow served as a Prefect deployment on a cron schedule.

`serve_retrain` serves `flows.prefect_flows.retrain_flow` on a real Prefect server
(PREFECT_API_URL must point at ``prefect server start``); `check_cron` refuses an invalid cron
line and `prefect_api_url` an absent server before anything starts.
"""

from __future__ import annotations

import os
from datetime import datetime

from indexstore.errors import GroveError


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


def absolute_url(url: str) -> str:
    """A store URL whose DuckDB path is absolute (a served flow may run in another directory)."""
    if url.startswith("duckdb:///") and not url.startswith("duckdb:////"):
        path = url[len("duckdb:///") :]
        if path and path != ":memory:" and not os.path.isabs(path):
            return "duckdb:///" + os.path.abspath(path)
    return url


def deployment_name(index: str) -> str:
    return f"retrain-{index}"


def serve_retrain(url: str, index: str, cron: str, parameters: dict, name: str | None = None) -> None:
    """Serve `retrain_flow` for ``index`` on ``cron`` (blocks until interrupted)."""
    from flows.prefect_flows import retrain_flow

    retrain_flow.serve(
        name=name or deployment_name(index),
        cron=check_cron(cron),
        parameters={"url": absolute_url(url), "index": index, **parameters},
        description=f"scheduled retraining of index {index!r}",
    )
