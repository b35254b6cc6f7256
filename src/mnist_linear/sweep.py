"""``python -m mnist_linear.sweep``: one training per L2 strength, each its own TensorBoard run.

Each run lands in ``<root_dir>/lightning_logs/<name>/lambda=<λ>``, so that
``tensorboard --logdir lightning_logs/<name>`` overlays ``val/acc`` and ``weight_norm``
of all of them. Arguments after the sweep's own are passed to ``train.py`` unchanged.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mnist_linear.errors import OneLineArgumentParser, fail

DEFAULT_LAMBDAS = ("0", "0.0001", "0.001", "0.01")


def _l2_lambda(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return text


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = OneLineArgumentParser(
        prog="python -m mnist_linear.sweep",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m mnist_linear.sweep --config configs/logistic.yaml",
    )
    parser.add_argument("--config", default="configs/logistic.yaml", help="train.py config file.")
    parser.add_argument(
        "--lambdas", nargs="+", type=_l2_lambda, default=list(DEFAULT_LAMBDAS),
        help="L2 strengths to train with, in order (default: %(default)s).",
    )  # fmt: skip
    parser.add_argument(
        "--name", default="logistic_l2", help="Folder of the runs under lightning_logs."
    )
    parser.add_argument("--root_dir", default=".", help="Folder that holds lightning_logs.")
    return parser.parse_known_args(argv)


def run_folder(root_dir: str, name: str, l2_lambda: str) -> Path:
    return Path(root_dir) / "lightning_logs" / name / f"lambda={l2_lambda}"


def command(args: argparse.Namespace, l2_lambda: str, extra: list[str]) -> list[str]:
    """The ``train.py`` command line of one run of the sweep."""
    return [
        sys.executable, "-m", "mnist_linear.cli",
        f"--config={args.config}",
        f"--model.l2_lambda={l2_lambda}",
        f"--trainer.default_root_dir={args.root_dir}",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={args.root_dir}",
        f"--trainer.logger.name=lightning_logs/{args.name}",
        f"--trainer.logger.version=lambda={l2_lambda}",
        "--trainer.logger.default_hp_metric=false",
        *extra,
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    args, extra = parse_args(argv)
    if not Path(args.config).is_file():
        fail(f"--config: no file at {args.config!r}")
    folders = [run_folder(args.root_dir, args.name, lam) for lam in args.lambdas]
    existing = [folder for folder in folders if folder.exists()]
    if existing:
        fail(f"--name: {existing[0]} exists already; remove it or choose another --name")
    for l2_lambda, folder in zip(args.lambdas, folders, strict=True):
        print(f"== l2_lambda={l2_lambda}: {folder}", flush=True)
        done = subprocess.run(command(args, l2_lambda, extra))
        if done.returncode != 0:
            sys.exit(done.returncode)


if __name__ == "__main__":
    main()
