"""Beyond one machine: multi-node DDP started by hand, and a sweep run by a scheduler."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO, read_results, run_dir, sweep_command, train_in_process

from mnist_linear import sweep

SMALL = ("--config=configs/logistic.yaml", "--data.train_size=2000", "--trainer.max_epochs=1")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_train_what_one_process_trains(mnist_root, tmp_path) -> None:
    single = tmp_path / "single"
    train_in_process(
        *SMALL,
        "--data.batch_size=40",
        f"--data.data_dir={mnist_root}",
        f"--trainer.default_root_dir={single}",
        "--trainer.enable_progress_bar=false",
    )
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
    assert two["global_step"] == one["global_step"] == 9
    assert two["best_epoch"] == one["best_epoch"]
    for key in ("train/acc", "val/acc", "test/acc", "train/loss", "val/loss", "test/loss"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    a, b = (torch.load(run_dir(r) / "checkpoints" / "last.ckpt", weights_only=True)
            for r in (single, root))  # fmt: skip
    for key in ("linear.weight", "linear.bias"):
        torch.testing.assert_close(b["state_dict"][key], a["state_dict"][key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_sweep_after_dry_run_commands_ran_only_writes_the_summary(
    sweep_root, mnist_root, tmp_path, capsys, monkeypatch
) -> None:
    """What a scheduler would do with ``--dry_run``: every command, then the sweep again.

    The commands run in this process (as ``python -m mnist_linear.cli`` would run them);
    the sweep after them trains nothing and writes the summary the sweep itself writes.
    """
    monkeypatch.chdir(REPO)
    sweep.main([*sweep_command(tmp_path, mnist_root)[3:], "--dry_run"])
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4
    assert all(line.startswith("python -m mnist_linear.cli ") for line in printed)
    assert not (tmp_path / "lightning_logs").exists()  # a dry run writes nothing
    for line in printed:
        train_in_process(*shlex.split(line)[3:])
    capsys.readouterr()
    sweep.main(sweep_command(tmp_path, mnist_root)[3:])
    out = capsys.readouterr().out
    assert out.startswith("4 of 4 runs done already; 0 to train")
    assert not [line for line in out.splitlines() if line.startswith("[")]  # nothing trained
    (ours,) = tmp_path.glob("lightning_logs/*/summary.csv")
    (theirs,) = sweep_root.glob("lightning_logs/*/summary.csv")
    assert ours.relative_to(tmp_path) == theirs.relative_to(sweep_root)
    assert ours.read_text() == theirs.read_text()
