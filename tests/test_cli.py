"""``python train.py``: real runs, their output, and one-line answers to bad input."""

from __future__ import annotations

import ast
import io
import itertools
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    IMAGE_TAGS,
    REPO,
    SCALAR_TAGS,
    SMALL,
    events,
    read_results,
    run_dir,
    run_train,
    steps_an_epoch,
    stopping_state,
    train_here,
    train_in_process,
    two_vs_three,
)
from lightning.pytorch.profilers import SimpleProfiler

from mnist_linear import mnist_files, workers
from mnist_linear.cli import CLI_KWARGS, MNISTLinearCLI
from mnist_linear.data import MNISTSubsetDataModule
from mnist_linear.mnist_files import MNISTFilesError
from mnist_linear.model import LinearClassifier

RESULT_KEYS = {
    "train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc",
    "weight_norm", "best_epoch", "best_step", "stopped_epoch", "stop_reason", "global_step",
    "threads", "seconds",
}  # fmt: skip


def test_short_training_learns_and_writes_every_output(logistic_run: Path) -> None:
    folder = run_dir(logistic_run)
    results = read_results(logistic_run)
    assert set(results) == RESULT_KEYS
    assert results["global_step"] == 300
    assert results["val/acc"] > 0.9 and results["test/acc"] > 0.9  # chance is about 0.5
    assert (folder / "config.yaml").is_file()
    assert {p.name for p in (folder / "checkpoints").iterdir()} >= {"last.ckpt"}
    assert any(p.name.startswith("best-") for p in (folder / "checkpoints").iterdir())
    tags = events(folder).Tags()
    assert set(tags["scalars"]) >= SCALAR_TAGS
    assert set(tags["images"]) >= IMAGE_TAGS


def test_metrics_are_logged_ten_times_per_epoch(logistic_run: Path) -> None:
    accumulator = events(run_dir(logistic_run))
    for tag in ("train/loss", "val/acc", "test/acc", "weight_norm"):
        steps = [e.step for e in accumulator.Scalars(tag)]
        assert steps == list(range(10, 301, 10)), tag  # after every block of 10 steps


def test_saved_config_is_the_resolved_one(logistic_run: Path, mnist_root: Path) -> None:
    config = yaml.safe_load((run_dir(logistic_run) / "config.yaml").read_text())
    assert config["data"]["classes"] == [2, 3]
    assert config["data"]["data_dir"] == str(mnist_root)
    assert config["trainer"]["max_epochs"] == 3
    assert "num_classes" not in config["model"]  # linked from the data module, never stated twice


def test_hparams_yaml_holds_the_model_and_data_arguments_of_config_yaml(
    logistic_run: Path,
) -> None:
    folder = run_dir(logistic_run)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    hparams = yaml.safe_load((folder / "hparams.yaml").read_text())
    # The model's and the data module's arguments, num_classes (2: the two classes of
    # data.classes) and LightningCLI's record of the class to rebuild: nothing else.
    expected = {**config["model"], **config["data"], "num_classes": len(config["data"]["classes"])}
    instantiator = hparams.pop("_instantiator")
    assert instantiator == "lightning.pytorch.cli.instantiate_module"
    assert hparams == expected


@pytest.fixture(scope="module")
def peaked_run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """4 epochs at a constant rate of 1.0 with λ = 0.01: the best epoch is 2, not the last.

    The epoch values of val/loss are 0.102, 0.149, 0.095, 0.155 on this machine.
    """
    root = tmp_path_factory.mktemp("peaked")
    train_in_process(
        *SMALL, "--model.learning_rate=1.0", "--annealing.T=null", "--model.l2_lambda=0.01",
        "--early_stopping.patience=10", "--trainer.max_epochs=4", f"--data.data_dir={mnist_root}",
        f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
    )  # fmt: skip
    return run_dir(root)


def _binary_cross_entropy_and_accuracy(
    weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """Mean cross-entropy (no L2 term) and accuracy of a binary model, in float64 numpy."""
    w = weights["linear.weight"].double().numpy().ravel()
    b = float(weights["linear.bias"].double().numpy()[0])
    z = x.double().numpy() @ w + b
    t = y.numpy().astype(np.float64)
    loss = np.mean(np.logaddexp(0, z) - t * z)  # -t log σ(z) - (1 - t) log(1 - σ(z))
    return float(loss), float(np.mean((z >= 0) == (t == 1)))


def test_results_are_of_the_restored_weights_not_the_last(peaked_run: Path, mnist_root) -> None:
    results = json.loads((peaked_run / "results.json").read_text())
    last = torch.load(peaked_run / "checkpoints" / "last.ckpt", weights_only=True)
    restored = stopping_state(last)["best_state"]
    assert (results["best_epoch"], results["stopped_epoch"]) == (2, 3)
    assert not torch.equal(restored["linear.weight"], last["state_dict"]["linear.weight"])
    data = two_vs_three(mnist_root, train_size=2000)
    for stage, split in (("train", data.train_set), ("val", data.val_set), ("test", data.test_set)):
        loss, accuracy = _binary_cross_entropy_and_accuracy(restored, *split.tensors)
        assert results[f"{stage}/acc"] == pytest.approx(accuracy, abs=1e-6), stage  # float32
        assert results[f"{stage}/loss"] == pytest.approx(loss, rel=1e-5), stage
    (best,) = (peaked_run / "checkpoints").glob("best-*.ckpt")
    assert best.name == "best-epoch=2-step=27.ckpt"
    saved = torch.load(best, weights_only=True)["state_dict"]
    for key, value in restored.items():
        assert torch.equal(saved[key], value), key
    norm = float(np.linalg.norm(restored["linear.weight"].double().numpy()))
    assert results["weight_norm"] == pytest.approx(norm, rel=1e-6)


def test_logged_losses_are_the_cross_entropy_without_the_l2_term(
    peaked_run: Path, mnist_root: Path
) -> None:
    # λ = 0.01: the training loss is the cross-entropy plus λ‖W‖², about 0.09 more here.
    last = torch.load(peaked_run / "checkpoints" / "last.ckpt", weights_only=True)
    state = stopping_state(last)
    restored, step = state["best_state"], state["best_step"]
    data = two_vs_three(mnist_root, train_size=2000)
    logged = events(peaked_run)
    penalty = 0.01 * float(restored["linear.weight"].double().square().sum())
    assert penalty > 0.01
    for stage, split in (("train", data.train_set), ("val", data.val_set), ("test", data.test_set)):
        (value,) = [e.value for e in logged.Scalars(f"{stage}/loss") if e.step == step]
        loss, _ = _binary_cross_entropy_and_accuracy(restored, *split.tensors)
        assert value == pytest.approx(loss, rel=1e-5), stage


def _cli(*args: str) -> MNISTLinearCLI:
    """train.py's CLI, made as train.py makes it, leaving the test process as it was."""
    with workers.fresh_state():
        return MNISTLinearCLI(LinearClassifier, MNISTSubsetDataModule, args=list(args),
                              **CLI_KWARGS)  # fmt: skip


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _cli(f"--config={config}", f"--trainer.default_root_dir={tmp_path}")
    assert isinstance(cli.model, LinearClassifier) and isinstance(
        cli.datamodule, MNISTSubsetDataModule
    )
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    assert cli.trainer.max_epochs == 100
    assert cli.trainer.val_check_interval == 1  # after every block
    assert cli.datamodule.evaluations_per_epoch == 10
    assert cli.datamodule.batch_size == 40


def test_a_named_profiler_is_the_trainers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = f"--config={REPO / 'configs' / 'logistic.yaml'}"
    root = f"--trainer.default_root_dir={tmp_path}"
    assert type(_cli(config, root, "--trainer.profiler=simple").trainer.profiler) is SimpleProfiler


@pytest.mark.parametrize(
    "argument, option, value",
    [
        ("--model.learning_rate=-1", "learning_rate", "-1"),
        ("--data.classes=[2,12]", "data.classes", "12"),
        ("--data.classes=[4,4]", "classes", "[4, 4]"),
        ("--data.batch_size=zero", "data.batch_size", "zero"),
        ("--trainer.max_epochs=abc", "trainer.max_epochs", "abc"),
        ("--model.momentum=1.5", "model.momentum", "1.5"),
        ("--model.bogus=1", "--model.bogus", "1"),
        ("--trainer.max_epoch=3", "--trainer.max_epoch", "3"),  # no abbreviation of max_epochs
        ("--ckpt_path=missing.ckpt", "--ckpt_path", "missing.ckpt"),
        ("--trainer.accelerator=foo", "accelerator", "foo"),
        (
            "--trainer.accelerator=GPU",
            "--trainer.accelerator must be one of auto, cpu, cuda, gpu, mps, tpu (available here: ",
            "'GPU'",
        ),
        pytest.param(
            "--trainer.accelerator=gpu",
            "--trainer.accelerator",
            "available here: auto, cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU"),
        ),
        ("--annealing.T=-3", "annealing.T", "-3"),
        ("--early_stopping.patience=0", "early_stopping.patience", "0"),
        ("--early_stopping.rule=x", "early_stopping.rule", "x"),
        ("--early_stopping.monitor=val/lossx", "early_stopping.monitor", "val/lossx"),
        ("--early_stopping.monitor=val/acc", "'val/loss', 'train/loss'", "val/acc"),
        ("--data.train_size=59000", "train_size", "59000"),
        ("--model.nesterov=true", "nesterov", "True"),
        ("--config=configs/nope.yaml", "config", "nope.yaml"),
        ("--seed_everything=-1", "seed_everything", "-1"),
        ("--seed_everything=4294967296", "seed_everything", "4294967296"),
        ("--data.seed=-1", "data.seed", "-1"),
        ("--model.learning_rate=inf", "model.learning_rate", "inf"),
        ("--model.learning_rate=nan", "model.learning_rate", "nan"),
        ("--model.l2_lambda=inf", "model.l2_lambda", "inf"),
        ("--model.l2_lambda=-inf", "model.l2_lambda", "-inf"),
        ("--model.l2_lambda=nan", "model.l2_lambda", "nan"),
        ("--annealing.T=inf", "annealing.T", "inf"),
        ("--data.data_dir=README.md", "data.data_dir", "'README.md' must be a folder"),
        ("--data.data_dir=README.md/data", "data.data_dir", "'README.md' is not a folder"),
    ],
)
def test_bad_input_is_one_line_naming_option_and_value_with_exit_code_2(
    argument: str,
    option: str,
    value: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ["--config=configs/logistic.yaml", f"--trainer.default_root_dir={tmp_path}", argument]
    with pytest.raises(SystemExit) as stop:
        train_in_process(*args)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert option in lines[0] and value in lines[0], lines[0]
    assert not (tmp_path / "lightning_logs").exists()  # refused before any run folder


@pytest.mark.parametrize(
    "key, typo, named",
    [("patience: 3", "patiense: 3", ["'early_stopping'", "'patiense'"]),
     ("T: 1000", "T: nul", ['"annealing.T"', "Given value: nul"])],
)  # fmt: skip
def test_a_typo_in_a_config_section_names_the_key(
    key: str, typo: str, named: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text((REPO / "configs" / "logistic.yaml").read_text().replace(key, typo))
    with pytest.raises(SystemExit) as stop:
        train_in_process(f"--config={config}", f"--trainer.default_root_dir={tmp_path}")
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and all(word in line for word in named), line


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the file holds no options; a config file is a mapping such as "
         "'model: {learning_rate: 0.1}'"),
        ("# only a comment\n\n", "the file holds no options"),
        (None, "data must be a mapping of its options, or left out, got null"),
        ("early_stopping: null\nmodel:\n  learning_rate: 0.1\n",
         "early_stopping must be a mapping of its options, or left out, got null"),
        ("annealing: 3\nmodel:\n  learning_rate: 0.1\n",
         "annealing must be a mapping of its options, or left out, got 3"),
        # model has a required option, which jsonargparse would name instead
        ("model: null\n", "model must be a mapping of its options, or left out, got null"),
        # completed by the test's --trainer.default_root_dir, which keeps only that key
        ("trainer: 3\nmodel:\n  learning_rate: 0.1\n",
         "trainer must be a mapping of its options, or left out"),
    ],
)  # fmt: skip
def test_an_empty_config_or_a_null_section_is_one_line_naming_the_file(
    text: str | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    if text is None:  # the shipped config with its data section emptied
        shipped = (REPO / "configs" / "logistic.yaml").read_text()
        text = shipped[: shipped.index("\ndata:")] + "\ndata: null\n"
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit) as stop:
        train_in_process(f"--config={config}", f"--trainer.default_root_dir={tmp_path}")
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: --config {config}: {message}"), captured.err
    assert captured.err.count("\n") == 1
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    "argument, value",
    [("--trainer.gradient_clip_val=1.0", "gradient_clip_val=1.0"),
     ("--trainer.accumulate_grad_batches=2", "accumulate_grad_batches=2")],
)  # fmt: skip
def test_trainer_flags_of_automatic_optimisation_are_refused_by_lightning_in_one_line(
    argument: str, value: str, tmp_path: Path, mnist_root: Path, capfd, monkeypatch
) -> None:
    last = _refusal([argument], tmp_path, mnist_root, capfd)
    assert last.startswith("error: ") and value in last, last


@pytest.mark.parametrize(
    "argument",
    ["--trainer.limit_val_batches=0.5", "--data.val_size=1", "--data.train_size=100",
     "--trainer.val_check_interval=50"],
)  # fmt: skip
def test_a_refusal_once_the_data_is_read_prints_nothing_of_lightnings(
    argument: str, tmp_path: Path, mnist_root: Path, capfd
) -> None:
    # Lightning's handlers write where stderr was when it was imported; one of ours sees
    # what they would have printed.
    printed = io.StringIO()
    handler = logging.StreamHandler(printed)
    logging.getLogger("lightning.pytorch").addHandler(handler)
    try:
        line = _refusal(["--data.train_size=2000", argument], tmp_path, mnist_root, capfd)
        assert line.startswith("error: ") and printed.getvalue() == ""
        # A run that trains prints them, in order, once training starts.
        assert train_here(*SMALL, "--trainer.max_epochs=1", root=tmp_path, mnist=mnist_root) == 0
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    said = printed.getvalue()
    assert 0 <= said.index("GPU available") < said.index("Total params") < said.index("stopped")


@pytest.mark.slow
def test_a_refusal_inside_lightnings_fit_is_the_only_line_a_process_prints(
    tmp_path: Path, mnist_root: Path
) -> None:
    done = run_train(*SMALL, "--trainer.limit_val_batches=0.5", root=tmp_path, mnist=mnist_root)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: You requested to check 0.5 of the `val_dataloader`")
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "lightning_logs").exists()


def _refusal(args: list[str], root: Path, mnist: Path, capfd: pytest.CaptureFixture) -> str:
    """Run train.py's main in this process; the one-line refusal it ends with (exit code 2)."""
    assert train_here("--config=configs/logistic.yaml", *args, root=root, mnist=mnist) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert not (root / "lightning_logs").exists()  # the refused run left no folder
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args, message",
    [(["--data.batch_size=5000"], "at most 4005 for a training split of 4005 images on 1 "
      "process(es), got 5000"),
     # Refused in the main process, before ddp_spawn starts its three workers.
     (["--data.batch_size=1400", "--trainer.devices=3", "--trainer.strategy=ddp_spawn",
       "--trainer.accelerator=cpu"], "at most 1335 for a training split of 4005 images on 3 "
      "process(es), got 1400")],
)  # fmt: skip
def test_batch_larger_than_the_two_digit_split_is_one_line_and_exit_code_2(
    args: list[str], message: str, tmp_path: Path, mnist_root: Path, capfd, monkeypatch
) -> None:
    assert (
        _refusal(args, tmp_path, mnist_root, capfd) == f"error: --data.batch_size must be {message}"
    )
    assert not (tmp_path / "lightning_logs").exists()


# The MNIST training labels from index 20000 are 5 9 7 3 ..., the test labels end 2 3 4 5 6,
# and the training labels' first 3 is at index 7 (after the first 2), the first 8 at 17, last
# of the ten digits.
@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.val_size=1"], "val_size must be at least 4 with classes [2, 3], "
         "so that the validation split holds an image, got 1"),
        (["--data.test_size=3"], "test_size must be at least 4 with classes [2, 3], "
         "so that the test split holds an image, got 3"),
        (["--data.train_size=7", "--data.batch_size=1"], "train_size must be at least 8 with "
         "classes [2, 3], so that every class has a training image, got 7"),
        (["--data.classes=null", "--data.train_size=17", "--data.batch_size=1"],
         "train_size must be at least 18 with all ten digits, so that every class has a "
         "training image, got 17"),
    ],
)  # fmt: skip
def test_an_empty_split_or_a_class_without_training_images_is_refused_up_front(
    args: list[str], message: str, tmp_path: Path, mnist_root: Path, capfd, monkeypatch
) -> None:
    assert _refusal(args, tmp_path, mnist_root, capfd) == f"error: --data.{message}"
    assert not (tmp_path / "lightning_logs").exists()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """Two epochs of 2000 training images, batch 40, in this process: the output root."""
    root = tmp_path_factory.mktemp("one_process")
    train_in_process(
        *SMALL,
        "--trainer.max_epochs=2",
        f"--data.data_dir={mnist_root}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
    )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_ddp_two_processes_train_exactly_what_one_process_trains(
    strategy: str, one_process: Path, mnist_root: Path, tmp_path: Path
) -> None:
    done = run_train(
        *SMALL, "--trainer.max_epochs=2", f"--trainer.strategy={strategy}",
        "--trainer.devices=2", "--trainer.accelerator=cpu", "--data.batch_size=20",
        root=tmp_path, mnist=mnist_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stderr and "deprecated" not in done.stderr, done.stderr
    single = torch.load(run_dir(one_process) / "checkpoints" / "last.ckpt", weights_only=True)
    double = torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    assert single["global_step"] == double["global_step"] == 2 * steps_an_epoch(mnist_root, 2000)
    for key in ("linear.weight", "linear.bias"):
        assert not torch.equal(
            single["state_dict"][key], torch.zeros_like(single["state_dict"][key])
        )
        torch.testing.assert_close(
            double["state_dict"][key], single["state_dict"][key], rtol=1e-5, atol=1e-6
        )
    one, two = read_results(one_process), read_results(tmp_path)
    for key in ("train/acc", "val/acc", "test/acc", "train/loss", "val/loss", "test/loss"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    assert two["best_epoch"] == one["best_epoch"]


@pytest.mark.slow
def test_a_runs_saved_config_reruns_to_the_same_results(
    logistic_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = run_dir(logistic_run) / "config.yaml"
    train_in_process(f"--config={saved}", f"--trainer.default_root_dir={tmp_path}")
    expected, got = read_results(logistic_run), read_results(tmp_path)
    assert {k: v for k, v in got.items() if k != "seconds"} == {
        k: v for k, v in expected.items() if k != "seconds"
    }


@pytest.mark.slow
@pytest.mark.parametrize("config", ["logistic.yaml", "softmax.yaml"])
def test_shipped_configs_fit_as_shipped_with_the_progress_bar(
    config: str, mnist_root: Path, tmp_path: Path, monkeypatch, capfd
) -> None:
    train_in_process(f"--config={REPO / 'configs' / config}", "--trainer.max_epochs=1",
                     f"--data.data_dir={mnist_root}",
                     f"--trainer.default_root_dir={tmp_path}")  # fmt: skip
    output = "".join(capfd.readouterr())
    assert "Traceback" not in output and "val/acc=" in output
    results = read_results(tmp_path)
    assert results["global_step"] == (100 if config == "logistic.yaml" else 500)
    assert results["val/acc"] > (0.95 if config == "logistic.yaml" else 0.85)


@pytest.mark.slow
def test_the_readme_logistic_row(mnist_root: Path, tmp_path: Path) -> None:
    # configs/logistic.yaml as shipped, progress bar on: 21 epochs, best epoch 9, 96.91% / 98.77%.
    command = [
        sys.executable, str(REPO / "train.py"), "--config=configs/logistic.yaml",
        f"--data.data_dir={mnist_root}", f"--trainer.default_root_dir={tmp_path}",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240
    )  # one stream, as a terminal shows it
    assert done.returncode == 0, done.stdout[-3000:]
    # The early-stopping message gets a line of its own, not the end of the bar's line.
    lines = [line for line in done.stdout.splitlines() if "Early stopping" in line]
    assert lines and all(line.startswith("Early stopping in epoch 20") for line in lines), lines
    assert "val/acc=" in done.stdout  # the bar was drawn, with the validation numbers
    results = read_results(tmp_path)
    assert (results["stopped_epoch"], results["best_epoch"]) == (20, 9)
    assert round(100 * results["train/acc"], 2) == 97.50
    assert round(100 * results["val/acc"], 2) == 96.91  # 408 of 421
    assert round(100 * results["test/acc"], 2) == 98.77  # 400 of 405
    assert round(results["val/loss"], 4) == 0.0867


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trainer.check_val_every_n_epoch=0"], "--trainer.check_val_every_n_epoch must be "
         "an integer >= 1 (evaluate every N epochs), or null, got 0"),
        (["--trainer.check_val_every_n_epoch=-1"], "--trainer.check_val_every_n_epoch must be "
         "an integer >= 1 (evaluate every N epochs), or null, got -1"),
        (["--trainer.val_check_interval=0"], "--trainer.val_check_interval must be an integer "
         ">= 1 (evaluate after every N training blocks), a fraction of an epoch in [0.0, 1.0] "
         "or a duration DD:HH:MM:SS, got 0"),
        (["--trainer.min_epochs=-1"], "--trainer.min_epochs must be an integer >= 0, or null, "
         "got -1"),
        (["--trainer.min_steps=-1"], "--trainer.min_steps must be an integer >= 0, or null, "
         "got -1"),
        (["--trainer.log_every_n_steps=-1"], "--trainer.log_every_n_steps must be an integer "
         ">= 0 (0: no logging of training steps), or null, got -1"),
        (["--trainer.num_sanity_val_steps=-2"], "--trainer.num_sanity_val_steps must be an "
         "integer >= -1 (-1: every batch), or null, got -2"),
    ],
)  # fmt: skip
def test_a_trainer_flag_lightning_would_fail_on_later_is_refused_up_front(
    args: list[str], message: str, tmp_path: Path, mnist_root: Path, capfd, monkeypatch
) -> None:
    assert _refusal(args, tmp_path, mnist_root, capfd) == f"error: {message}"
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, most, flag",
    [(["--trainer.val_check_interval=100"], None, ""),
     (["--trainer.val_check_interval=5", "--trainer.limit_train_batches=4"], 4,
      ", 4 of them under --trainer.limit_train_batches 4"),
     (["--trainer.val_check_interval=3", "--trainer.overfit_batches=2"], 2,
      ", 2 of them under --trainer.overfit_batches 2")],
)  # fmt: skip
def test_an_evaluation_interval_longer_than_an_epoch_is_refused_before_training(
    args: list[str], most: int | None, flag: str, tmp_path: Path, mnist_root: Path, capfd,
    monkeypatch,
) -> None:  # fmt: skip
    steps = steps_an_epoch(mnist_root, 2000)
    blocks = min(10, steps)  # the config's evaluations_per_epoch, at most one per step
    last = _refusal(["--data.train_size=2000", "--trainer.max_epochs=1", *args], tmp_path,
                    mnist_root, capfd)  # fmt: skip
    interval = args[0].split("=")[1]
    assert last == (
        f"error: --trainer.val_check_interval counts training blocks and must be at most "
        f"{most or blocks}, the blocks of an epoch ({blocks}: --data.evaluations_per_epoch, at "
        f"most one per step of the {steps}{flag}), unless --trainer.check_val_every_n_epoch is "
        f"null; got {interval}"
    )
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        ([f"--trainer.default_root_dir={REPO / 'README.md'}"], "--trainer.default_root_dir "
         f"must be a folder or a path where one can be made, got '{REPO / 'README.md'}' "
         f"('{REPO / 'README.md'}' is not a folder)"),
        (["--trainer.default_root_dir=/proc/x"], "--trainer.default_root_dir: cannot make a run "
         "folder in /proc/x: No such file or directory"),
        (["--trainer.logger=TensorBoardLogger", "--trainer.logger.save_dir=/proc/x"],
         "--trainer.logger.save_dir: cannot make a run folder in /proc/x: No such file or "
         "directory"),
        (["--data.data_dir=/proc/foo"], "--data.data_dir must be a folder or a path where one "
         "can be made, got '/proc/foo' (/proc/foo/MNIST/raw cannot be made: No such file or "
         "directory)"),
    ],
)  # fmt: skip
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_folder_that_cannot_be_made_is_refused_naming_the_option(
    args: list[str], message: str, tmp_path: Path, mnist_root: Path, capfd, monkeypatch
) -> None:
    root = tmp_path / "root"
    assert _refusal(args, root, mnist_root, capfd) == f"error: {message}"
    assert not root.exists()  # nothing made, or what was made removed


REFUSED_AT = {
    "parsing": "--model.learning_rate=inf",
    "a constructor": "--model.nesterov=true",
    "the Trainer": "--trainer.max_epochs=-2",
    "fit": "--data.val_size=1",
}
LOGGERS = {
    "default": [],
    "configured": ["--trainer.logger=TensorBoardLogger", "--trainer.logger.save_dir={root}/a/b"],
    "versioned": ["--trainer.logger=CSVLogger", "--trainer.logger.save_dir={root}/a/b",
                  "--trainer.logger.version=named"],
}  # fmt: skip


@pytest.mark.parametrize("stage", REFUSED_AT)
@pytest.mark.parametrize("logger", LOGGERS)
def test_a_refused_run_leaves_no_folder_it_made(
    stage: str, logger: str, tmp_path: Path, mnist_root: Path, capfd, monkeypatch
) -> None:
    root = tmp_path / "root"  # made by nobody yet: the run would make it
    args = [arg.format(root=root) for arg in LOGGERS[logger]]
    _refusal([*args, REFUSED_AT[stage]], root, mnist_root, capfd)
    assert not root.exists()


# --- The README's options, each through the command line, each for what it means -------


def _train(root: Path, mnist: Path, *args: str) -> Path:
    """``train.py SMALL ARGS`` in this process, writing under ``root``: the run folder."""
    assert train_here(*SMALL, *args, root=root, mnist=mnist) == 0
    return run_dir(root)


def test_nesterov_momentum_from_the_command_line_is_the_optimizers(
    tmp_path: Path, mnist_root: Path
) -> None:
    folder = _train(tmp_path, mnist_root, "--model.momentum=0.9", "--model.nesterov=true",
                    "--trainer.max_epochs=1")  # fmt: skip
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    (optimizer,) = checkpoint["optimizer_states"]
    (group,) = optimizer["param_groups"]
    assert (group["momentum"], group["nesterov"]) == (0.9, True)
    buffers = [s["momentum_buffer"] for s in optimizer["state"].values()]
    assert len(buffers) == 2 and all(b.abs().sum() > 0 for b in buffers)  # W and b


def test_annealing_t_null_keeps_the_learning_rate_constant(tmp_path: Path, mnist_root) -> None:
    folder = _train(tmp_path, mnist_root, "--annealing.T=null", "--model.learning_rate=0.3",
                    "--trainer.max_epochs=2")  # fmt: skip
    rates = [e.value for e in events(folder).Scalars("lr")]
    blocks = min(10, steps_an_epoch(mnist_root, 2000))  # evaluations, at most one a step
    assert len(rates) == 2 * blocks and set(rates) == {np.float32(0.3)}  # α(t) = 0.3 throughout


@pytest.mark.slow
@pytest.mark.parametrize(
    "rule, patience", [("no_improvement", 3), ("no_improvement", 5), ("rises", 3)]
)
def test_the_stop_epoch_follows_the_rule_on_the_logged_validation_losses(
    rule: str, patience: int, tmp_path: Path, mnist_root: Path
) -> None:
    # At a constant rate of 1.0 these 2000 images' validation loss jumps about: Lightning's
    # rule stops in epoch 9 (patience 3) or 11 (5), the assignment's not within 13 epochs.
    steps = steps_an_epoch(mnist_root, 2000)
    folder = _train(tmp_path, mnist_root, "--model.learning_rate=1.0", "--annealing.T=null",
                    f"--early_stopping.rule={rule}", f"--early_stopping.patience={patience}",
                    "--trainer.max_epochs=13")  # fmt: skip
    logged = {e.step: e.value for e in events(folder).Scalars("val/loss")}
    values = [logged[end] for end in range(steps, max(logged) + 1, steps)]  # each epoch's end
    expected = 12  # max_epochs reached, unless the rule stops first
    for epoch in range(len(values)):
        if rule == "rises":
            window = values[epoch - patience : epoch + 1] if epoch >= patience else []
            stop = bool(window) and all(a < b for a, b in itertools.pairwise(window))
        else:
            stop = epoch - int(np.argmin(values[: epoch + 1])) >= patience
        if stop:
            expected = epoch
            break
    results = json.loads((folder / "results.json").read_text())
    assert results["stopped_epoch"] == expected == len(values) - 1
    assert results["best_epoch"] == int(np.argmin(values))


def _profiled(root: Path, mnist: Path, profiler: str, caplog: pytest.LogCaptureFixture) -> str:
    """One epoch with ``--trainer.profiler PROFILER``: its report, which Lightning logs.

    Lightning's logger has a handler of its own, made when it was imported, which in a
    test process writes nowhere a test can read: the report is taken from the record.
    """
    logger = logging.getLogger("lightning.pytorch.profilers")
    logger.addHandler(caplog.handler)
    try:
        _train(root, mnist, f"--trainer.profiler={profiler}", "--trainer.max_epochs=1")
    finally:
        logger.removeHandler(caplog.handler)
    return caplog.text


def test_the_advanced_profiler_profiles_each_sgd_step_of_the_hand_derived_loss(
    tmp_path: Path, mnist_root: Path, caplog
) -> None:
    out = _profiled(tmp_path, mnist_root, "advanced", caplog)
    report = out[out.index("Profile stats for: [Strategy]SingleDeviceStrategy.training_step") :]
    report = report[: report.index("Profile stats for:", 1)]
    (row,) = [line for line in report.splitlines() if "(linear_cross_entropy)" in line]
    assert int(row.split()[0]) == steps_an_epoch(mnist_root, 2000)  # one call per step


def test_the_pytorch_profiler_reports_and_writes_its_traces_into_the_run_folder(
    tmp_path: Path, mnist_root: Path, caplog
) -> None:
    out = _profiled(tmp_path, mnist_root, "pytorch", caplog)
    folder = run_dir(tmp_path)
    assert "FIT Profiler Report" in out and "Self CPU" in out  # torch.profiler's table
    traces = list(folder.glob("fit-*.pt.trace.json"))
    assert traces and all(json.loads(t.read_text())["traceEvents"] for t in traces)


def test_no_mnist_source_that_works_ends_in_one_line_and_exit_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    def fails(root: Path, folder: Path, names: set[str]) -> None:
        raise MNISTFilesError("unreachable in this test")

    monkeypatch.setattr(mnist_files, "SOURCES", (("source A", fails), ("source B", fails)))
    root = tmp_path / "root"
    with pytest.raises(SystemExit) as stop:
        train_in_process(*SMALL, f"--data.data_dir={tmp_path / 'data'}",
                         f"--trainer.default_root_dir={root}")  # fmt: skip
    assert stop.value.code == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "source A: unreachable" in last, last
    assert "source B: unreachable" in last
    assert not root.exists()  # the run folder it claimed is removed


# --- The map from the README's claims to their tests ------------------------------------

NAMED_TEST = re.compile(r"tests/(test_\w+\.py)::(test_\w+)")
ANY_TEST = re.compile(r"(?<![/\w])(test_\w+)\b(?!\.py)")


def _tests_in(module: Path) -> set[str]:
    """The names of the test functions a test module defines, read from its source."""
    tree = ast.parse(module.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_test_the_docs_name_exists() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    texts = {page.name: page.read_text() for page in pages}
    named = {(page, *found) for page, text in texts.items() for found in NAMED_TEST.findall(text)}
    assert len(named) >= 40  # docs/tests.md names a test for each of the README's claims
    missing = [
        f"{page}: tests/{module}::{test}"
        for page, module, test in sorted(named)
        if not (REPO / "tests" / module).is_file() or test not in _tests_in(REPO / "tests" / module)
    ]
    assert missing == []
    # A test named without its module (not a tag such as hp/test_acc, nor a module name).
    every = set().union(*(_tests_in(module) for module in (REPO / "tests").glob("test_*.py")))
    bare = {(page, name) for page, text in texts.items() for name in ANY_TEST.findall(text)}
    assert sorted((page, name) for page, name in bare if name not in every) == []
    assert "(docs/tests.md)" in (REPO / "README.md").read_text()
