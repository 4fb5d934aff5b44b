"""The command line's conventions (issue 28.2): --version; global options before or after the
command; every option documented with its default; one spelling per idea; `grove config`;
a reader closing the pipe early ends the command quietly."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from grove import __version__
from grove.flows.cli import build_parser, main, subcommand_parsers
from grove.models.config_info import BY_METHOD, COMMON, config_fields
from grove.models.registry import method_names


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"grove {__version__}"


def test_store_before_or_after_the_command(tmp_path, capsys):
    url = f"duckdb:///{tmp_path / 'g.duckdb'}"
    assert main(["init", "--store", url]) == 0
    assert main(["data", "synth", "--name", "s", "--items", "50", "--users", "60", "--store", url]) == 0
    assert main(["--store", url, "data", "list"]) == 0
    assert main(["data", "list", "--store", url]) == 0
    out = capsys.readouterr().out
    assert out.count("synth") >= 2  # both spellings list the same dataset


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    undocumented, defaults_hidden = [], []
    for command in [parser, *subcommand_parsers(parser)]:
        formatter = command._get_formatter()
        for action in command._actions:
            if isinstance(action, (argparse._SubParsersAction, argparse._HelpAction, argparse._VersionAction)):
                continue
            name = action.option_strings[0] if action.option_strings else action.dest
            if not action.help:
                undocumented.append(f"{command.prog} {name}")
            shown = action.default not in (None, argparse.SUPPRESS) and not isinstance(action.default, bool)
            if shown and action.option_strings and "default" not in formatter._get_help_string(action):
                defaults_hidden.append(f"{command.prog} {name}")
    assert not undocumented, undocumented
    assert not defaults_hidden, defaults_hidden


def test_help_names_no_file_outside_the_repository():
    parser = build_parser()
    for command in [parser, *subcommand_parsers(parser)]:
        text = command.format_help()
        for name in ("STACK.md", "ARCHITECTURE.md", "STYLE.md"):
            assert name not in text, (command.prog, name)
        assert "PROTOCOL.md" not in text or "docs/PROTOCOL.md" in text


def test_one_spelling_per_idea():
    """The index is positional in every command that names one; --k/--beam read the same list
    syntax everywhere; counts and files have different option names."""
    parser = build_parser()
    for command in subcommand_parsers(parser):
        flags = {s for a in command._actions for s in a.option_strings}
        assert "--index" not in flags or command.prog.endswith("import-index"), command.prog
        assert "--items" not in flags or command.prog.endswith("data synth"), command.prog
    with pytest.raises(SystemExit):
        parser.parse_args(["retrieve", "ix", "--k", "5,10"])  # one value where one is taken
    args = parser.parse_args(["retrieve", "ix", "--k", "5", "--beam", "20"])
    assert (args.k, args.beam) == (5, 20)
    args = parser.parse_args(["eval", "ix", "--k", "5,10", "--beam", "20"])
    assert (args.k, args.beam) == ((5, 10), (20,))
    assert parser.parse_args(["cycle", "ix", "--dataset", "d", "--method", "tdm"]).beam == (20, 50, 100)


@pytest.mark.parametrize("method", method_names())
def test_config_lists_every_field_with_a_meaning(method, capsys):
    fields = config_fields(method)
    assert fields and all(f.doc for f in fields), [f.name for f in fields if not f.doc]
    assert main(["config", method]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["field", "type", "default", "meaning"]
    assert {line.split()[0] for line in lines[2:]} == {f.name for f in fields}
    assert main(["config", method, "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in parsed] == [f.name for f in fields]


def test_config_docs_name_only_real_fields():
    known = {f.name for m in method_names() for f in config_fields(m)}
    assert set(COMMON) <= known
    for method, docs in BY_METHOD.items():
        assert set(docs) <= {f.name for f in config_fields(method)}, method


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``grove sql ... | head -2``: the reader stops after two lines of a long table; the command
    ends without a traceback (status 1, as Python documents for a broken pipe)."""
    url = f"duckdb:///{tmp_path / 'g.duckdb'}"
    assert main(["init", "--store", url]) == 0
    grove = f"{sys.executable} -m grove.flows.cli --store {url}"
    res = subprocess.run(
        ["bash", "-c", f"{grove} sql 'SELECT * FROM range(200000)' | head -2; echo status ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and lines[-1] == "status 1", res.stdout
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr
