"""Time the shipped softmax config against a numpy and a plain PyTorch implementation.

    python benchmarks/speed.py [--data_dir data] [--repeats 3]
    python benchmarks/speed.py --breakdown_only --accelerator gpu   # Lightning's costs alone

(a) ``python train.py --config configs/softmax.yaml``, start to finish, as shipped;
(b) ``benchmarks/numpy_reference.py``: the notebook's algorithm in numpy;
(c) ``benchmarks/torch_loop.py``: the same steps and evaluations in plain PyTorch.
(b) and (c) run as many epochs as (a) did, so all three do the same 500 steps and 10
evaluations of the three splits per epoch. Every time is a whole process, start-up
included. The three run one after another, ``--repeats`` times, and the report gives
the median of each, so that a slow spell of the machine does not land on one of them
alone. Also prints Lightning's cost per step and per evaluation, measured in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, object]:
    """What the ratios depend on: the processor, the threads, and each library's BLAS."""
    import numpy as np
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        cpu = names[0] if names else cpu
    numpy_blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    torch_blas = next(
        (part.split("=", 1)[1] for part in torch.__config__.show().replace(",", " ").split()
         if part.startswith("BLAS_INFO=")), "unknown",
    )  # fmt: skip
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numpy_blas": f"{numpy_blas.get('name')} {numpy_blas.get('version', '')}".strip(),
        "torch_blas": torch_blas,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


def lightning_breakdown(data_dir: str, epochs: int, accelerator: str = "auto") -> dict[str, float]:
    """Milliseconds per training step and per evaluation of the shipped softmax config.

    A step is a block's time over its steps (Lightning's hooks around the block
    included); setup, checkpoints and images are in neither figure.
    """
    import lightning as L
    import torch

    from mnist_linear.cli import MNISTLinearCLI
    from mnist_linear.data import MNISTSubsetDataModule
    from mnist_linear.model import LinearClassifier

    class Clock(L.Callback):
        """Time spent in the training blocks and in the evaluations, nothing else.

        On a GPU the clock waits for the device at every reading, so that each span
        holds its own kernels.
        """

        def __init__(self) -> None:
            self.training = self.evaluation = self.started = 0.0
            self.evaluations = 0

        def _now(self, pl_module: L.LightningModule) -> float:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            return time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.started = self._now(pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.training += self._now(pl_module) - self.started

        def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.started = self._now(pl_module)

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.evaluation += self._now(pl_module) - self.started
            self.evaluations += 1

    with tempfile.TemporaryDirectory() as root:
        cli = MNISTLinearCLI(
            LinearClassifier,
            MNISTSubsetDataModule,
            run=False,
            args=[
                f"--config={REPO / 'configs' / 'softmax.yaml'}",
                f"--data.data_dir={data_dir}",
                f"--trainer.default_root_dir={root}",
                f"--trainer.max_epochs={epochs}",
                "--trainer.enable_progress_bar=false",
                f"--trainer.accelerator={accelerator}",
            ],
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False},
        )
        clock = Clock()
        cli.trainer.callbacks.insert(0, clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        steps = cli.trainer.global_step
    return {
        "step_ms": 1000 * clock.training / steps,
        "evaluation_ms": 1000 * clock.evaluation / clock.evaluations,
    }


def run_train_py(data_dir: str) -> tuple[float, dict]:
    """(a): seconds of the shipped softmax run through train.py, and its results.json."""
    with tempfile.TemporaryDirectory() as root:
        seconds, _ = timed(
            [
                sys.executable, "train.py", "--config=configs/softmax.yaml",
                f"--data.data_dir={data_dir}", f"--trainer.default_root_dir={root}",
            ]
        )  # fmt: skip
        (results_path,) = Path(root).glob("lightning_logs/version_*/results.json")
        return seconds, json.loads(results_path.read_text())


def run_reference(script: str, data_dir: str, epochs: int) -> tuple[float, dict]:
    """(b) or (c): seconds of the whole process, and the timings it prints."""
    seconds, out = timed(
        [sys.executable, f"benchmarks/{script}", f"--data_dir={data_dir}", f"--epochs={epochs}"]
    )
    return seconds, json.loads(out)


def main() -> None:
    from mnist_linear.errors import OneLineArgumentParser

    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="data")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="Rounds of (a), (b), (c), run one after another in each round; "
        "the report gives the medians and every round's ratios.",
    )
    parser.add_argument("--breakdown_epochs", type=int, default=3)
    parser.add_argument(
        "--accelerator", default="auto", help="Trainer accelerator of the in-process breakdown."
    )
    parser.add_argument(
        "--breakdown_only",
        action="store_true",
        help="Print only Lightning's cost per step and per evaluation, with the machine.",
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats: expected at least 1, got {args.repeats}")

    from mnist_linear.mnist_files import ensure_mnist

    ensure_mnist(args.data_dir)  # built before any clock starts
    if args.breakdown_only:
        sys.argv = sys.argv[:1]
        breakdown = lightning_breakdown(args.data_dir, args.breakdown_epochs, args.accelerator)
        print(json.dumps({"machine": machine(), "accelerator": args.accelerator, **breakdown}))
        return
    a_times, b_times, c_times = [], [], []
    epochs = numpy_run = torch_run = results = None
    for _ in range(args.repeats):
        a_seconds, results = run_train_py(args.data_dir)
        if epochs is None:
            epochs = results["stopped_epoch"] + 1
        elif results["stopped_epoch"] + 1 != epochs:
            raise RuntimeError("train.py stopped after a different number of epochs")
        b_seconds, numpy_run = run_reference("numpy_reference.py", args.data_dir, epochs)
        c_seconds, torch_run = run_reference("torch_loop.py", args.data_dir, epochs)
        a_times.append(a_seconds)
        b_times.append(b_seconds)
        c_times.append(c_seconds)
    sys.argv = sys.argv[:1]  # the in-process CLI below takes its arguments from args=
    breakdown = lightning_breakdown(args.data_dir, args.breakdown_epochs, args.accelerator)
    a, b, c = (statistics.median(t) for t in (a_times, b_times, c_times))
    report = {
        "machine": machine(),
        "epochs": epochs,
        "steps": results["global_step"],
        "repeats": args.repeats,
        "a_train_py_seconds": round(a, 2),
        "b_numpy_seconds": round(b, 2),
        "c_torch_seconds": round(c, 2),
        "a_over_b": round(a / b, 3),
        "a_over_c": round(a / c, 3),
        "rounds": [
            {"a": round(x, 2), "b": round(y, 2), "c": round(z, 2), "a_over_b": round(x / y, 3)}
            for x, y, z in zip(a_times, b_times, c_times, strict=True)
        ],
        "step_ms": {
            "lightning": round(breakdown["step_ms"], 3),
            "numpy": round(1000 * numpy_run["step_seconds"] / numpy_run["steps"], 3),
            "torch": round(1000 * torch_run["step_seconds"] / torch_run["steps"], 3),
        },
        "evaluation_ms": {
            "lightning": round(breakdown["evaluation_ms"], 2),
            "numpy": round(1000 * numpy_run["eval_seconds"] / numpy_run["evaluations"], 2),
            "torch": round(1000 * torch_run["eval_seconds"] / torch_run["evaluations"], 2),
        },
        "final_val_acc": {
            "lightning": round(results["val/acc"], 4),
            "numpy": round(numpy_run["val_acc"], 4),
            "torch": round(torch_run["val_acc"], 4),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
