"""The command line: each subcommand is a module that declares its flags, builds its run's spec
(`howhard.runs`) from them and prints the result. This is the only layer that speaks of
``--flags``: a library error about a parameter (``HowhardError.params``) is reworded here into
the flag the user typed."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from howhard.cli import bestof, compare, demo, evaluate, export, label, score, serve, train
from howhard.errors import HowhardError

COMMANDS = (label, export, score, train, evaluate, bestof, serve, compare, demo)


def parser() -> argparse.ArgumentParser:
    """The ``howhard`` parser; each subcommand's parser has its run in ``run`` (set_defaults)."""
    root = argparse.ArgumentParser(
        prog="howhard",
        description="Decide how hard an LM should think about each input: label queries with "
        "sampled rewards, learn to predict them, allocate samples adaptively, evaluate.",
    )
    sub = root.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    return root


def flag_message(error: HowhardError, command: argparse.ArgumentParser) -> str:
    """The error's message with each parameter it names (``error.params``) written as the
    command's flag: ``max_per_query`` becomes ``--max-per-query``. A word inside a path or file
    name (``/tmp/router.npz``, ``budget.toml``) is left alone."""
    text = str(error)
    flags = {a.dest: a.option_strings[-1] for a in command._actions if a.option_strings}
    for param in error.params:
        if param in flags:
            word = rf"(?<![\w./-]){re.escape(param)}(?![\w-]|[./]\w)"
            text = re.sub(word, flags[param], text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    root = parser()
    args = root.parse_args(argv)
    try:
        return int(args.run(args))
    except HowhardError as e:
        print(f"howhard {args.command}: error: {flag_message(e, args.parser)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"howhard {args.command}: interrupted; rerun to resume", file=sys.stderr)
        return 130


__all__ = ["main", "parser"]
