"""The loop the reference implementations share: epochs, steps, evaluations, timings.

Each reference supplies its own shuffling, step and evaluation, in its own library;
this module only counts, times and reports, so that both are timed the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data_dir", default="data", help="Folder holding MNIST/raw.")
    parser.add_argument("--epochs", type=int, required=True, help="Epochs to train.")
    parser.add_argument(
        "--learning_rate", type=float, default=0.2, help="α0 for the mean gradient."
    )
    parser.add_argument("--T", type=float, default=1000, help="Annealing: α0 / (1 + t/T).")
    parser.add_argument("--batch_size", type=int, default=40, help="Images per step.")
    return parser.parse_args()


def train(
    args: argparse.Namespace,
    num_images: int,
    permutation: Callable[[], Sequence[int]],
    step: Callable[[Sequence[int], float], None],
    evaluate: Callable[[], float],
    started: float,
) -> None:
    """Run ``args.epochs`` epochs of steps, evaluating ten times an epoch; print timings as JSON.

    ``step(indices, lr)`` takes one step on the images ``indices``; ``evaluate()``
    computes loss and accuracy on the three splits and returns validation accuracy.
    """
    steps_per_epoch = num_images // args.batch_size
    evaluate_every = steps_per_epoch // 10
    t, step_seconds, eval_seconds, evaluations, val_acc = 0, 0.0, 0.0, 0, float("nan")
    for _ in range(args.epochs):
        order = permutation()
        for i in range(steps_per_epoch):
            clock = time.perf_counter()
            step(
                order[i * args.batch_size : (i + 1) * args.batch_size],
                args.learning_rate / (1 + t / args.T),
            )
            t += 1
            step_seconds += time.perf_counter() - clock
            if (i + 1) % evaluate_every == 0:
                clock = time.perf_counter()
                val_acc = evaluate()
                evaluations += 1
                eval_seconds += time.perf_counter() - clock
    report = {
        "steps": t,
        "evaluations": evaluations,
        "step_seconds": step_seconds,
        "eval_seconds": eval_seconds,
        "val_acc": val_acc,
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(report))
