"""grove's flows: Prefect flows and tasks, the command line, the HTTP service.

Prefect's temporary local server (started when no PREFECT_API_URL is set) sends anonymous usage
data at start-up and logs an ERROR when the machine has no internet; grove turns that off unless
the user set PREFECT_SERVER_ANALYTICS_ENABLED, before any module here imports Prefect."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
