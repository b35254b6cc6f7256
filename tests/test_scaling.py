"""Beyond one machine: multi-node DDP started by hand, and a sweep run by a scheduler."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO, read_results, run_dir, run_train, sweep_command

SMALL = ("--config=configs/logistic.yaml", "--data.train_size=2000", "--trainer.max_epochs=2")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_train_what_one_process_trains(mnist_root, tmp_path) -> None:
    single = tmp_path / "single"
    assert run_train(*SMALL, "--data.batch_size=40", root=single, mnist=mnist_root).returncode == 0
    root = tmp_path / "nodes"
    command = [
        sys.executable, str(REPO / "train.py"), *SMALL, "--data.batch_size=20",
        "--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.strategy=ddp",
        "--trainer.accelerator=cpu", f"--data.data_dir={mnist_root}",
        f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    cluster = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
               "LOCAL_RANK": "0"}  # fmt: skip
    nodes = [
        subprocess.Popen(command, cwd=REPO, env={**os.environ, **cluster, "NODE_RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]  # fmt: skip
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[1][1][-3000:]
    # Node 1 writes nothing of its own: one run folder, one event file, one summary.
    folder = run_dir(root)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert "Results:" in outputs[0][0] and "Results:" not in outputs[1][0]
    one, two = read_results(single), read_results(root)
    assert two["global_step"] == one["global_step"] == 18
    assert two["best_epoch"] == one["best_epoch"]
    for key in ("train/acc", "val/acc", "test/acc", "train/loss", "val/loss", "test/loss"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    a, b = (torch.load(run_dir(r) / "checkpoints" / "last.ckpt", weights_only=True)
            for r in (single, root))  # fmt: skip
    for key in ("linear.weight", "linear.bias"):
        torch.testing.assert_close(b["state_dict"][key], a["state_dict"][key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dry_run_commands_run_by_a_shell_loop_give_the_sweeps_summary(
    sweep_root, mnist_root, tmp_path
) -> None:
    """What a scheduler would do with ``--dry_run``: every command at once, then the summary."""
    printed = subprocess.run(
        [*sweep_command(tmp_path, mnist_root), "--dry_run"], cwd=REPO, capture_output=True,
        text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert len(printed) == 4 and all(
        line.startswith("python -m mnist_linear.cli ") for line in printed
    )
    loop = "\n".join(f"{line} > /dev/null 2>&1 &" for line in printed) + "\nwait\n"
    subprocess.run(["bash", "-c", loop], cwd=REPO, timeout=240, check=True)
    done = subprocess.run(sweep_command(tmp_path, mnist_root), cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("4 of 4 runs done already; 0 to train")
    (ours,) = tmp_path.glob("lightning_logs/*/summary.csv")
    (theirs,) = sweep_root.glob("lightning_logs/*/summary.csv")
    assert ours.relative_to(tmp_path) == theirs.relative_to(sweep_root)
    assert ours.read_text() == theirs.read_text()
