"""The ``grove`` command line.

``grove [--store URL] COMMAND ...``; the store URL defaults to ``$GROVE_STORE`` or
``duckdb:///grove.duckdb`` in the working directory. Store commands live in
`flows.cli.store`, learning commands in `flows.cli.learning`, the demo in `flows.cli.demo`,
operating commands (schedule, promote, serve, report) in `flows.cli.operations`, ``store copy``
in `flows.cli.store_copy`; each registers its subcommands and sets ``func(args) -> int``; what
they share is `flows.cli.common`. Every `GroveError` is printed as one line ``error: ...`` on
stderr with exit status 2; every command but ``init`` (and ``demo``, which runs it) refuses a
store whose schema is missing or behind.
"""

from __future__ import annotations

import argparse
import sys

from indexstore.errors import GroveError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``error: grove eval: argument --users: ...``),
    like every other grove error, instead of the usage block; exit status 2 as argparse's."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from flows.cli import demo, learning, operations, store, store_copy

    parser = OneLineParser(prog="grove", description="learned retrieval indexes as versioned data")
    parser.add_argument(
        "--store", default=None, help="SQLAlchemy URL of the store (default: $GROVE_STORE or duckdb:///grove.duckdb)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    store.register(sub)
    store_copy.register(sub)
    learning.register(sub)
    demo.register(sub)
    operations.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one grove command; returns the exit status (0 ok, 2 bad input or usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's usage errors (already printed) and --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except GroveError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point: `main`, then exit without interpreter finalisation
    (`flows.quiet_exit`: DuckDB's leak report would bury the command's output)."""
    from flows.quiet_exit import exit_quietly

    exit_quietly(main())
