"""``prunebench``: one console script with subcommands.

Every subcommand has ``--help``; with ``--json`` it prints exactly one JSON object on stdout (logs
go to stderr). Bad input ends with one line on stderr naming the bad value and what is allowed,
and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import yaml

from prunebench import __version__
from prunebench.errors import ConfigError

Handler = Callable[[argparse.Namespace], dict[str, Any]]


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["rho=0.7", "positions=[3,6,9]"]`` → ``{"rho": 0.7, "positions": [3, 6, 9]}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects PARAM=VALUE, got '{item}'")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot parse value '{value}' (YAML syntax)") from None
    return out


def _add_flops(sub: argparse._SubParsersAction) -> None:
    from prunebench.models.registry import BACKBONES

    p = sub.add_parser(
        "flops",
        help="count the backbone's GMACs per frame on the executed inference graph",
        description=(
            "Count the backbone's cost per frame (batch 1) on the executed inference graph, in GMACs "
            "(multiply-accumulates, fvcore convention: LayerNorm 5 per element; GFLOPs = 2 x GMACs). "
            "Methods whose kept count depends on the image (vpp, svit) need --data."
        ),
    )
    p.add_argument("--backbone", default="vit_small", help=f"one of {', '.join(sorted(BACKBONES))}")
    p.add_argument("--method", default="dense", help="a registered pruning method")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="PARAM=VALUE",
                   help="a method parameter, e.g. --set rho=0.7 (repeatable)")
    p.add_argument("--img-size", nargs=2, type=int, default=[224, 224], metavar=("H", "W"))
    p.add_argument("--data", default=None, metavar="DIR", help="a YouTube-VIS folder to average over")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the selectors' noise")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_flops)


def _run_flops(args: argparse.Namespace) -> dict[str, Any]:
    from prunebench.evaluation.cost import measure_flops

    return measure_flops(
        backbone=args.backbone,
        method=args.method,
        params=parse_assignments(args.params),
        img_size=tuple(args.img_size),
        data=args.data,
        seed=args.seed,
    )


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser."""
    parser = _Parser(prog="prunebench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"prunebench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_flops(sub)
    return parser


def _print_human(result: dict[str, Any]) -> None:
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        print(f"{key:>18}: {value}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunebench`` console script."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except ConfigError as error:
        print(f"prunebench {args.command}: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        _print_human(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
