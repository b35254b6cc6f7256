"""Time the README's λ sweep three ways: train.py processes in a row, the sweep at 1 and 2 jobs.

    python benchmarks/sweep_speed.py [--seeds 3] [--data_dir data]

(1) one ``python train.py`` process per run, one after another, as a shell loop would;
(2) ``python -m mnist_linear.sweep ... --jobs 1``; (3) the same with ``--jobs 2``.
Each is the README's λ grid (0, 0.0001, 0.001, 0.01) of ``configs/logistic.yaml`` with
``--seeds`` seeds, in a folder of its own, timed as a whole, start-up included. Prints
the three wall times, their ratios, and whether the sweeps' summaries are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAMBDAS = ("0", "0.0001", "0.001", "0.01")


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def in_a_row(root: Path, seeds: int, data_dir: str) -> float:
    """Seconds for the sweep's runs as ``python train.py`` processes, one after another."""
    started = time.perf_counter()
    for lam in LAMBDAS:
        for seed in range(seeds):
            timed([
                sys.executable, "train.py", "--config=configs/logistic.yaml",
                f"--model.l2_lambda={lam}", f"--seed_everything={seed}", f"--data.seed={seed}",
                f"--data.data_dir={data_dir}", f"--trainer.default_root_dir={root}",
                "--trainer.enable_progress_bar=false",
            ])  # fmt: skip
    return time.perf_counter() - started


def sweep(root: Path, seeds: int, jobs: int, data_dir: str) -> float:
    return timed([
        sys.executable, "-m", "mnist_linear.sweep", "--config=configs/logistic.yaml",
        f"--grid=model.l2_lambda={','.join(LAMBDAS)}", f"--seeds={seeds}", f"--jobs={jobs}",
        "--name=logistic_l2", f"--root_dir={root}", f"--data.data_dir={data_dir}",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per λ (default: 3).")
    parser.add_argument("--data_dir", default="data", help="Folder of the MNIST files.")
    args = parser.parse_args()
    data_dir = str(Path(args.data_dir).resolve())
    runs = len(LAMBDAS) * args.seeds
    with tempfile.TemporaryDirectory(prefix="sweep-speed-") as tmp:
        seconds = {
            f"{runs} train.py processes in a row": in_a_row(Path(tmp, "row"), args.seeds, data_dir),
            "sweep --jobs 1": sweep(Path(tmp, "jobs1"), args.seeds, 1, data_dir),
            "sweep --jobs 2": sweep(Path(tmp, "jobs2"), args.seeds, 2, data_dir),
        }
        summaries = [
            Path(tmp, folder, "lightning_logs", "logistic_l2", "summary.csv").read_text()
            for folder in ("jobs1", "jobs2")
        ]
    baseline = next(iter(seconds.values()))
    for what, value in seconds.items():
        print(f"{what:<34} {value:7.1f} s   {value / baseline:.3f} of the processes in a row")
    print(f"summaries of --jobs 1 and --jobs 2 identical: {summaries[0] == summaries[1]}")
    print(json.dumps({"cores": os.cpu_count(), "runs": runs, "seconds": seconds}))


if __name__ == "__main__":
    main()
