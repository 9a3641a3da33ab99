"""`asymbp methods`: the method-string grammar and every feedback scheme."""

from __future__ import annotations

HELP = "list the method-string grammar, feedback schemes and update rules"


def add_parser(sub) -> None:
    p = sub.add_parser("methods", help=HELP, description=HELP + ".")
    p.add_argument("method", nargs="?", help="a method string to parse and explain")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..methods import describe, parse_method

    if args.method is not None:  # '' is a mistake (parse_method says so), not "list all"
        spec = parse_method(args.method)
        print(f"{args.method} -> {spec.name}: scheme={spec.scheme_name} bn={spec.bn} "
              f"bn_affine={spec.bn_affine} update={spec.update} weight_norm={spec.weight_norm} "
              f"freeze={spec.freeze}")
    else:
        print(describe())
    return 0
