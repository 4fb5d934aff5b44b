"""``python -m flows.cli`` = ``grove``."""

from flows.cli import run

run()
