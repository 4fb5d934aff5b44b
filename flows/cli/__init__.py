"""The ``grove`` command line.

``grove [--store URL] COMMAND ...`` (``--store`` is also accepted after the command); the store
URL defaults to ``$GROVE_STORE`` or ``duckdb:///grove.duckdb`` in the working directory. Store commands live in
`grove.flows.cli.store`, learning commands in `grove.flows.cli.learning`, the demo in `grove.flows.cli.demo`,
operating commands (schedule, promote, serve, report) in `grove.flows.cli.operations`, ``store copy``
in `grove.flows.cli.store_copy`; each registers its subcommands and sets ``func(args) -> int``; what
they share is `grove.flows.cli.common`. Every `GroveError` is printed as one line ``error: ...`` on
stderr with exit status 2; every command but ``init`` (and ``demo``, which runs it) refuses a
store whose schema is missing or behind.
"""

from __future__ import annotations

import argparse
import os
import sys

from grove import __version__
from grove.indexstore.errors import GroveError

STORE_HELP = "SQLAlchemy URL of the store (default: $GROVE_STORE or duckdb:///grove.duckdb)"


class HelpFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, when it has one worth showing (not None,
    not a flag's False); lists of numbers shown as they are typed (``10,50``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, argparse.SUPPRESS) or isinstance(default, bool) or "default" in text:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        if isinstance(default, (tuple, list)):
            default = ",".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``error: grove eval: argument --users: ...``),
    like every other grove error, instead of the usage block; exit status 2 as argparse's.
    Subcommand parsers are of this class too, with the same help formatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from grove.flows.cli import demo, index_files, learning, operations, store, store_copy

    parser = OneLineParser(prog="grove", description="learned retrieval indexes as versioned data")
    parser.add_argument("--version", action="version", version=f"grove {__version__}")
    parser.add_argument("--store", default=None, help=STORE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    store.register(sub)
    store_copy.register(sub)
    learning.register(sub)
    demo.register(sub)
    operations.register(sub)
    index_files.register(sub)
    for command in subcommand_parsers(parser):
        # the global option after the command too (grove data list --store URL); SUPPRESS keeps
        # the value given before the command when none is given after it
        command.add_argument("--store", default=argparse.SUPPRESS, help=STORE_HELP)
    return parser


def subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (commands and their actions), depth first."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                out += [child, *subcommand_parsers(child)]
    return out


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
    (`grove.flows.quiet_exit`: DuckDB's leak report would bury the command's output). A reader
    that closes the pipe early (``grove versions show 4 | head -2``) ends it quietly, status 1."""
    from grove.flows.quiet_exit import exit_quietly

    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush must not raise
        code = 1
    exit_quietly(code)
