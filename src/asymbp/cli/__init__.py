"""The `asymbp` command.

Each module of this package that defines `add_parser(subparsers)` contributes one subcommand
(found automatically), so a new command is one new module. A user mistake (`AsymbpError`, a bad
option) prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import AsymbpError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2) instead of usage dumps."""

    def error(self, message):  # noqa: D401 - argparse API
        raise AsymbpError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = ArgumentParser(
        prog="asymbp",
        description="Backpropagation without weight symmetry: train, sweep and report the "
                    "experiments of Liao, Leibo & Poggio (AAAI 2016) and successors.",
    )
    parser.add_argument("--version", action="version", version=f"asymbp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def fail(message: str, status: int = 2) -> int:
    print(f"asymbp: error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except AsymbpError as err:
        msg = str(err)
        return fail(msg[len("asymbp: "):] if msg.startswith("asymbp: ") else msg)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
