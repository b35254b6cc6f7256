"""Runs off the happy path: runs started together, Trainer flags, kills, damaged checkpoints."""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import runpy
import signal
import stat
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import (
    REPO,
    SMALL,
    events,
    read_results,
    run_dir,
    steps_an_epoch,
    stopping_state,
    train_command,
    train_here,
    train_in_process,
    two_vs_three,
)
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from mnist_linear import workers
from mnist_linear.callbacks import ValidationLossEarlyStopping
from mnist_linear.cli import CLI_KWARGS, MNISTLinearCLI
from mnist_linear.data import MNISTSubsetDataModule
from mnist_linear.files import current_umask
from mnist_linear.folders import claim_version
from mnist_linear.model import LinearClassifier
from mnist_linear.resume import read_checkpoint
from mnist_linear.run import AtomicCheckpointIO, AtomicTensorBoardLogger, RunResults

# --- Runs started together ---------------------------------------------------------------


def test_claimed_versions_are_distinct_and_skip_taken_ones(tmp_path: Path) -> None:
    (tmp_path / "version_3").mkdir(parents=True)
    (tmp_path / "version_x").mkdir()
    assert [claim_version(tmp_path) for _ in range(3)] == [4, 5, 6]


@pytest.mark.slow
def test_runs_started_together_in_one_folder_never_share_a_file(
    tmp_path: Path, mnist_root: Path
) -> None:
    seeds = (1, 2)
    runs = [
        subprocess.Popen(
            train_command(
                *SMALL, "--trainer.max_steps=5", f"--seed_everything={seed}",
                root=tmp_path, mnist=mnist_root,
            ),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for seed in seeds
    ]  # fmt: skip
    outputs = [run.communicate(timeout=240) for run in runs]
    assert [run.returncode for run in runs] == [0] * 2, [err[-2000:] for _, err in outputs]
    folders = sorted((tmp_path / "lightning_logs").iterdir())
    assert [f.name for f in folders] == ["version_0", "version_1"]
    printed = {line.split("Results: ")[1] for out, _ in outputs for line in out.splitlines()
               if line.startswith("Results: ")}  # fmt: skip
    assert printed == {str(f / "results.json") for f in folders}
    seen = set()
    for folder in folders:
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        seen.add(yaml.safe_load((folder / "config.yaml").read_text())["seed_everything"])
        results = folder / "results.json"
        assert json.loads(results.read_text())["global_step"] == 5
        assert stat.S_IMODE(results.stat().st_mode) == 0o666 & ~current_umask()
    assert seen == set(seeds)


@pytest.mark.parametrize("logger", ["TensorBoardLogger", "CSVLogger"])
def test_a_configured_logger_without_a_version_gets_a_folder_of_its_own(
    logger: str, tmp_path: Path, mnist_root: Path, monkeypatch
) -> None:
    args = [f"--trainer.logger={logger}", f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.logger.name=mine", "--trainer.max_steps=3"]  # fmt: skip
    assert _main(args, tmp_path, mnist_root) == _main(args, tmp_path, mnist_root) == 0
    folders = sorted((tmp_path / "mine").iterdir())
    assert [f.name for f in folders] == ["version_0", "version_1"]
    for folder in folders:
        assert json.loads((folder / "results.json").read_text())["global_step"] == 3
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["trainer"]["logger"]["init_args"]["version"] is None  # reruns afresh


def test_a_configured_tensorboard_logger_resumed_in_its_folder_purges_past_the_checkpoint(
    tmp_path: Path, mnist_root: Path, monkeypatch
) -> None:
    from mnist_linear.cli import MNISTLinearCLI

    logger = ["--trainer.logger=TensorBoardLogger", f"--trainer.logger.save_dir={tmp_path}",
              "--trainer.logger.name=sweep", "--trainer.logger.version=point,seed=0"]  # fmt: skip
    assert _main([*logger, "--trainer.max_epochs=1"], tmp_path, mnist_root) == 0
    folder = tmp_path / "sweep" / "point,seed=0"
    last = folder / "checkpoints" / "last.ckpt"
    with workers.fresh_state():
        cli = MNISTLinearCLI(LinearClassifier, MNISTSubsetDataModule, args=[
            *SMALL, *logger, f"--ckpt_path={last}", f"--data.data_dir={mnist_root}",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=2",
        ], **CLI_KWARGS)  # fmt: skip
    assert cli.run_dir == folder
    assert Path(cli.trainer.logger.log_dir) == folder
    cli.trainer.logger.experiment.flush()  # the new event file starts with the purge
    _, second = sorted(folder.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    starts = [
        e.step
        for e in EventFileLoader(str(second)).Load()
        if e.HasField("session_log") and e.session_log.status == e.session_log.START
    ]
    assert starts == [read_checkpoint(last)["global_step"] + 1]


# --- Lightning's Trainer flags ------------------------------------------------------------

# The whole 2-vs-3 training split, 20000 images: S steps an epoch in B blocks of S // B, so
# that counting blocks and counting steps give different numbers.
WHOLE = (f"--config={REPO / 'configs' / 'logistic.yaml'}", "--data.train_size=20000")
B = 10  # the config's evaluations_per_epoch
EVERY_FILE = {"config.yaml", "hparams.yaml", "results.json", "events", "checkpoints/last.ckpt",
              "checkpoints/best.ckpt"}  # fmt: skip
NO_LOG = EVERY_FILE - {"events", "hparams.yaml"}


def _every_block(epochs: int, steps: int) -> list[int]:
    return [k * steps // B for k in range(1, B * epochs + 1)]


# flag(s): (epochs, SGD steps, steps of the evaluations or None without a log, files), as
# functions of S, the steps of an epoch counted from the label bytes.
FLAGS = {
    ("--trainer.overfit_batches=3",): lambda s: (1, 3 * s // B, [10, 20, 30], EVERY_FILE),
    ("--trainer.enable_checkpointing=false",): lambda s: (
        1, s, _every_block(1, s), EVERY_FILE - {"checkpoints/last.ckpt", "checkpoints/best.ckpt"}),
    # Lightning's fast_dev_run is max_steps=1 (one SGD step, mid-block) and one evaluation.
    ("--trainer.fast_dev_run=true",): lambda s: (1, 1, None, {"config.yaml", "results.json"}),
    ("--trainer.limit_train_batches=4",): lambda s: (1, 4 * s // B, [10, 20, 30, 40], EVERY_FILE),
    ("--trainer.max_steps=7",): lambda s: (1, 7, [7], EVERY_FILE),
    ("--trainer.max_steps=15",): lambda s: (1, 15, [10, 15], EVERY_FILE),
    ("--trainer.val_check_interval=3",): lambda s: (2, 2 * s, [30, 60, 90, 130, 160, 190],
                                                    EVERY_FILE),
    ("--trainer.val_check_interval=15", "--trainer.check_val_every_n_epoch=null"): lambda s: (
        2, 2 * s, [150], EVERY_FILE),
    ("--trainer.check_val_every_n_epoch=2", "--trainer.val_check_interval=1.0"): lambda s: (
        2, 2 * s, [2 * s], EVERY_FILE),
    ("--trainer.limit_val_batches=0",): lambda s: (
        1, s, [], EVERY_FILE - {"checkpoints/best.ckpt"}),
    ("--trainer.limit_val_batches=3",): lambda s: (1, s, _every_block(1, s), EVERY_FILE),
    ("--trainer.max_time=00:00:05:00",): lambda s: (1, s, _every_block(1, s), EVERY_FILE),
    ("--trainer.precision=bf16-mixed",): lambda s: (1, s, _every_block(1, s), EVERY_FILE),
    ("--trainer.precision=64-true",): lambda s: (1, s, _every_block(1, s), EVERY_FILE),
    ("--trainer.num_sanity_val_steps=0",): lambda s: (1, s, _every_block(1, s), EVERY_FILE),
    ("--trainer.detect_anomaly=true",): lambda s: (1, s, _every_block(1, s), EVERY_FILE),
    ("--trainer.deterministic=false",): lambda s: (1, s, _every_block(1, s), EVERY_FILE),
    ("--trainer.enable_model_summary=false",): lambda s: (1, s, _every_block(1, s), EVERY_FILE),
    ("--trainer.logger=false",): lambda s: (1, s, None, NO_LOG),
}  # fmt: skip
# Flags that change nothing a run computes: results.json is the plain run's.
SAME_RESULTS = {"--trainer.limit_val_batches=3", "--trainer.precision=bf16-mixed",
                "--trainer.max_time=00:00:05:00", "--trainer.num_sanity_val_steps=0",
                "--trainer.enable_model_summary=false",
                "--trainer.detect_anomaly=true"}  # fmt: skip
REFUSED = [("--trainer.limit_val_batches=0.5", "limit_val_batches")]


def _main(args: list[str], root: Path, mnist: Path, *, run: tuple[str, ...] = SMALL) -> int:
    """``train.py RUN --trainer.max_epochs=2 ARGS`` in this process: its exit code."""
    return train_here(*run, "--trainer.max_epochs=2", *args, root=root, mnist=mnist)


def _files(folder: Path) -> set[str]:
    """The run folder's files, the event file as ``events`` and a best-* checkpoint as best."""
    names = set()
    for path in folder.rglob("*"):
        name = str(path.relative_to(folder))
        if path.is_file():
            name = "events" if name.startswith("events.out.tfevents.") else name
            names.add("checkpoints/best.ckpt" if name.startswith("checkpoints/best-") else name)
    return names


@pytest.fixture(scope="module")
def whole_split_run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> dict:
    """results.json of one epoch of the whole 2-vs-3 split with no Trainer flag set."""
    root = tmp_path_factory.mktemp("whole_split")
    assert _main(["--trainer.max_epochs=1"], root, mnist_root, run=WHOLE) == 0
    return read_results(root)


@pytest.mark.slow
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: " ".join(f))
def test_trainer_flag_gives_its_steps_evaluations_and_files_under_the_root(
    flags: tuple[str, ...], tmp_path: Path, mnist_root: Path, whole_split_run: dict, monkeypatch,
    capfd, caplog,
) -> None:  # fmt: skip
    steps = steps_an_epoch(mnist_root, 20000)
    assert steps == 100  # so blocks of 10 steps
    epochs, sgd_steps, evaluations, files = FLAGS[flags](steps)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    lightning = logging.getLogger("lightning.pytorch")  # its own handler writes elsewhere
    lightning.addHandler(caplog.handler)
    try:
        assert _main([f"--trainer.max_epochs={epochs}", *flags], root, mnist_root, run=WHOLE) == 0
    finally:
        lightning.removeHandler(caplog.handler)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing in the cwd
    folder = run_dir(root)
    results = read_results(root)
    assert results["global_step"] == sgd_steps
    assert _files(folder) == files
    if evaluations is not None:
        logged = events(folder).Scalars("val/loss") if evaluations else []
        assert [e.step for e in logged] == evaluations
    if evaluations:  # the restored weights are of an epoch's last evaluation, end or not
        last = {max(e for e in evaluations if e <= (k + 1) * steps) for k in range(epochs)
                if any(k * steps < e <= (k + 1) * steps for e in evaluations)}  # fmt: skip
        assert results["best_step"] in last, (results["best_step"], last)
    if flags[0] in SAME_RESULTS:
        assert _without(results, "seconds") == _without(whole_split_run, "seconds")
    if flags[0] == "--trainer.precision=64-true":
        weights = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
        assert weights["state_dict"]["linear.weight"].dtype == torch.float64
    summary = "Trainable params" in caplog.text  # Lightning's model summary
    assert summary == (flags[0] != "--trainer.enable_model_summary=false")


def _without(results: dict, *keys: str) -> dict:
    return {k: v for k, v in results.items() if k not in keys}


@pytest.mark.parametrize(
    "flags, stopped, best, first_line",
    [
        (["--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=2",
          "--trainer.val_check_interval=1.0"], 2, 1, "Stopped in epoch 2 ("),
        (["--trainer.limit_val_batches=0"], 1, None, "Stopped in epoch 1 ("),
        (["--trainer.max_epochs=0"], None, None, "No epoch trained ("),
    ],
)  # fmt: skip
def test_the_stop_is_in_the_last_epoch_trained_and_no_summary_says_none(
    flags: list[str], stopped: int | None, best: int | None, first_line: str,
    tmp_path: Path, mnist_root: Path, monkeypatch, capfd,
) -> None:  # fmt: skip
    assert _main(flags, tmp_path, mnist_root) == 0
    results = read_results(tmp_path)
    assert (results["stopped_epoch"], results["best_epoch"]) == (stopped, best)
    out = capfd.readouterr().out
    summary = out[out.index(first_line) :]
    assert "None" not in summary and "nan" not in summary, summary
    if best is None:
        assert "Weights as training left them (no evaluation to restore):" in summary


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def test_values_that_are_not_finite_are_null_in_strict_json_and_named_in_the_reason(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture
) -> None:
    dm = two_vs_three(mnist_root, train_size=2000)
    dm.val_set.tensors[0][5, 300] = float("nan")  # one validation image: val/loss is NaN
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=2,
        callbacks=[ValidationLossEarlyStopping(), RunResults(tmp_path)],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="val/loss is nan"):
        trainer.fit(LinearClassifier(2, learning_rate=0.1), datamodule=dm)
    text = (tmp_path / "results.json").read_text()
    results = json.loads(text, parse_constant=_refuse_constant)
    assert results["val/loss"] is None and results["best_epoch"] is None
    assert 0.5 < results["val/acc"] < 1 and results["train/loss"] > 0  # the rest stay numbers
    assert results["stop_reason"] == (
        "val/loss is nan at step 9: the learning rate is too high; "
        "val/loss not finite, written as null"
    )
    out = capsys.readouterr().out
    assert "val    loss not finite  acc " in out
    assert "nan" not in out.lower().replace("val/loss is nan", "") and "None" not in out


def _file_size_limit(limit: int) -> None:
    # Past the limit a write fails with EFBIG, as on a full disk with ENOSPC, instead of the
    # process being killed by SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_a_write_that_finds_no_room_is_one_line_naming_the_file_and_exit_code_1(
    tmp_path: Path, mnist_root: Path
) -> None:
    # config.yaml (about 2 kB) fits under 5000 bytes, a checkpoint (about 12 kB) does not.
    done = subprocess.run(
        train_command(*SMALL, "--trainer.max_epochs=1", "--trainer.logger=false",
                       root=tmp_path, mnist=mnist_root),
        cwd=REPO, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: _file_size_limit(5000),
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert last.startswith(f"error: cannot write {checkpoints}{os.sep}"), last
    assert last.endswith(f".ckpt: {os.strerror(errno.EFBIG)}"), last
    # The folder it claimed held no checkpoint to resume from: nothing is left of the run.
    assert not (tmp_path / "lightning_logs").exists()


def test_hparams_yaml_is_written_by_a_rename_inside_the_run_folder(tmp_path: Path) -> None:
    logger = AtomicTensorBoardLogger(tmp_path, "lightning_logs", 0)
    folder = Path(logger.log_dir)
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.yaml"
    (folder / "hparams.yaml").symlink_to(outside)  # a link: an in-place write follows it
    logger.log_hyperparams({"learning_rate": 0.2, "classes": [2, 3]})
    logger.save()
    assert not outside.exists()
    path = folder / "hparams.yaml"
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask()
    assert yaml.safe_load(path.read_text()) == {"learning_rate": 0.2, "classes": [2, 3]}
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_the_default_logger_writes_hparams_yaml_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*SMALL, f"--trainer.default_root_dir={tmp_path}"]
    with workers.fresh_state():
        cli = MNISTLinearCLI(LinearClassifier, MNISTSubsetDataModule, args=args, **CLI_KWARGS)
    assert type(cli.trainer.logger) is AtomicTensorBoardLogger


@pytest.mark.parametrize("flag, option", REFUSED)
def test_a_flag_that_cannot_apply_is_refused_in_one_line(
    flag: str, option: str, tmp_path: Path, mnist_root: Path, monkeypatch, capfd
) -> None:
    assert _main([flag], tmp_path, mnist_root) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and option in err[0], err
    assert not (tmp_path / "lightning_logs").exists()  # refused at fit time: no folder


def test_overfit_batches_trains_and_evaluates_the_first_batches_unshuffled(
    tmp_path: Path, mnist_root: Path, monkeypatch
) -> None:
    assert _main(["--trainer.overfit_batches=2", "--model.learning_rate=2.0",
                  "--trainer.max_epochs=10"], tmp_path, mnist_root) == 0  # fmt: skip
    results = read_results(tmp_path)
    assert results["global_step"] == 2 * (results["stopped_epoch"] + 1)  # two steps an epoch
    data = two_vs_three(mnist_root, train_size=2000)
    checkpoint = torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    model = LinearClassifier(2, learning_rate=1.0)
    model.load_state_dict({k: v for k, v in checkpoint["state_dict"].items() if "linear" in k})
    x, y = data.train_set.tensors
    assert (model.predict(x[:80]) == y[:80]).all()  # the 80 images fitted, in order
    assert results["train/acc"] < 1  # measured on the whole split at the end


# --- Early stopping: the recorded loss is the loss of the restored weights ----------------


def test_restored_and_best_weights_are_those_of_the_recorded_evaluation(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4s and 9s: 98 steps an epoch, in blocks of 10 and 9: evaluations 9 or 10 steps apart.
    assert _main(["--data.classes=[4,9]", "--data.train_size=20000", "--trainer.max_epochs=2"],
                 tmp_path, mnist_root) == 0  # fmt: skip
    folder = run_dir(tmp_path)
    results = read_results(tmp_path)
    logged = {e.step: e.value for e in events(folder).Scalars("val/loss")}
    # Blocks of 10, 10, ..., 9, 9 steps: the epoch's last evaluation comes at its end.
    assert [step for step in logged if step <= 98] == [10, 20, 30, 40, 50, 60, 70, 80, 89, 98]
    state = stopping_state(folder / "checkpoints" / "last.ckpt")
    assert state["best_step"] % 98 == 0  # an epoch's end
    assert logged[state["best_step"]] == pytest.approx(results["val/loss"], abs=1e-7)
    (best,) = (folder / "checkpoints").glob("best-*.ckpt")
    assert best.name == f"best-epoch={state['best_epoch']}-step={state['best_step']}.ckpt"
    weights = torch.load(best, weights_only=True)["state_dict"]
    for key, value in state["best_state"].items():
        assert torch.equal(weights[key], value), key
    model = LinearClassifier.load_from_checkpoint(best, map_location="cpu")
    assert float(model.linear.weight.detach().norm()) == pytest.approx(
        results["weight_norm"], rel=1e-6
    )


# --- Damaged checkpoints, kills and resumes ----------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "missing"])
def test_a_damaged_checkpoint_is_refused_in_one_line(
    damage: str, logistic_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    path = tmp_path / "damaged.ckpt"
    if damage == "truncated":
        data = (run_dir(logistic_run) / "checkpoints" / "last.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not a checkpoint":
        path = REPO / "README.md"
    with pytest.raises(SystemExit) as stop:
        train_in_process("--config=configs/logistic.yaml", f"--ckpt_path={path}",
                         f"--trainer.default_root_dir={tmp_path}")  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --ckpt_path: "), err
    assert str(path) in err[0]
    assert "weights_only" not in err[0]  # no advice to load an unknown file unsafely


def test_an_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path: Path) -> None:
    # The write to the file itself fails after 1000 bytes (a file size limit, as a full
    # disk would): written in place, the old checkpoint would be cut to those bytes.
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    old = {"state_dict": {"w": torch.ones(3)}, "global_step": 1, "epoch": 0,
           "optimizer_states": []}  # fmt: skip
    io.save_checkpoint(old, path)
    before = path.read_bytes()
    assert len(before) > 1000
    child = os.fork()
    if child == 0:  # the writer, with its files limited to 1000 bytes
        code = 3
        try:
            _file_size_limit(1000)
            io.save_checkpoint({"state_dict": {"w": torch.zeros(10_000)}}, path)
        except OSError as error:
            code = 0 if error.errno == errno.EFBIG else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # the write failed with EFBIG
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask()


# A run that stalls at the start of epoch 3 (last.ckpt of epoch 2 written, 5 epochs to go),
# by a callback of tests/stalls.py, until the test kills or interrupts it there.
STALLED = (*SMALL, "--trainer.max_epochs=8", "--model.learning_rate=1.0")
STALL = ("--trainer.callbacks+=stalls.Stall", "--trainer.callbacks.epoch=3")
STALL_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)}  # fmt: skip


def _stalled(root: Path, mnist: Path) -> tuple[subprocess.Popen, Path]:
    """``train.py STALLED`` in a process of its own, once it stalls: it and its last.ckpt."""
    folder = root / "lightning_logs" / "version_0"
    process = subprocess.Popen(
        train_command(*STALLED, *STALL, root=root, mnist=mnist), cwd=REPO, env=STALL_ENV,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (folder / "stalled").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    return process, folder / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """``train.py STALLED`` uninterrupted, in this process: its run folder."""
    root = tmp_path_factory.mktemp("uninterrupted")
    assert _main(list(STALLED[2:]), root, mnist_root) == 0
    return run_dir(root)


def _assert_resumed_as_uninterrupted(resumed: Path, whole: Path) -> None:
    expected, got = (json.loads((f / "results.json").read_text()) for f in (whole, resumed))
    assert _without(got, "seconds") == _without(expected, "seconds")
    a, b = (torch.load(f / "checkpoints" / "last.ckpt", weights_only=True)
            for f in (whole, resumed))  # fmt: skip
    assert a["global_step"] == b["global_step"] == 8 * 9
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert stopping_state(a)["history"] == stopping_state(b)["history"]
    # One run in TensorBoard: two event files, no step logged twice once the purge applies.
    steps = [e.step for e in events(resumed).Scalars("val/loss")]
    assert steps == [e.step for e in events(whole).Scalars("val/loss")]


@pytest.mark.slow
def test_a_killed_run_resumes_in_its_folder_to_the_uninterrupted_result(
    tmp_path: Path, mnist_root: Path, uninterrupted: Path
) -> None:
    process, last = _stalled(tmp_path, mnist_root)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert read_checkpoint(last)["epoch"] == 2  # the checkpoint of epoch 2's end
    assert not (last.parents[1] / "results.json").exists()
    assert _main([*STALLED[2:], f"--ckpt_path={last}"], tmp_path, mnist_root) == 0
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    _assert_resumed_as_uninterrupted(last.parents[1], uninterrupted)


@pytest.mark.slow
def test_ctrl_c_stops_gracefully_and_the_resume_repeats_the_epoch_to_the_same_result(
    tmp_path: Path, mnist_root: Path, uninterrupted: Path
) -> None:
    process, last = _stalled(tmp_path, mnist_root)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "Detected KeyboardInterrupt, attempting graceful shutdown" in output
    assert "Traceback" not in output
    assert not (last.parents[1] / "results.json").exists()
    assert read_checkpoint(last)["epoch"] == 2
    assert _main([*STALLED[2:], f"--ckpt_path={last}"], tmp_path, mnist_root) == 0
    _assert_resumed_as_uninterrupted(last.parents[1], uninterrupted)


# --- The split-accuracy script ----------------------------------------------------------


@pytest.mark.parametrize("classes", ["[2,3]", pytest.param("null", marks=pytest.mark.slow)])
def test_split_accuracy_script_reads_both_kinds_of_checkpoint(
    classes: str, tmp_path: Path, mnist_root: Path, monkeypatch, capsys
) -> None:
    assert _main([f"--data.classes={classes}", "--trainer.max_epochs=1"], tmp_path, mnist_root) == 0
    (best,) = (run_dir(tmp_path) / "checkpoints").glob("best-*.ckpt")
    capsys.readouterr()
    script = REPO / "docs" / "split_accuracy.py"
    monkeypatch.setattr("sys.argv", [str(script), str(best), f"--data_dir={mnist_root}"])
    runpy.run_path(str(script), run_name="__main__")
    rows = dict(line.rsplit(maxsplit=1) for line in capsys.readouterr().out.strip().splitlines())
    validation = float(rows["validation split, train[2000:4000]"].rstrip("%"))
    assert validation == pytest.approx(100 * read_results(tmp_path)["val/acc"], abs=0.01)


def test_a_read_only_data_folder_missing_a_file_ends_in_one_line_and_leaves_no_run_folder(
    mnist_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    from mnist_linear import mnist_files

    folder = mnist_copy / "MNIST" / "raw"
    (folder / "t10k-labels-idx1-ubyte").unlink()

    def read_only(path: object, chunks: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(mnist_files, "atomic_write_bytes", read_only)
    root = tmp_path / "root"
    assert _main([], root, mnist_copy) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: {folder} lacks t10k-labels-idx1-ubyte and cannot be written (Read-only file "
        "system): copy the four files into it, or use a data_dir where they can be built"
    )
    assert not root.exists()


@pytest.mark.parametrize(
    "flags, reason",
    [(["--trainer.max_epochs=2"], "max_epochs reached"),
     (["--trainer.max_steps=5"], "max_steps reached")],
)  # fmt: skip
def test_the_stop_reason_names_the_limit_that_ended_training(
    flags: list[str], reason: str, tmp_path: Path, mnist_root: Path, capfd
) -> None:
    assert _main(flags, tmp_path, mnist_root) == 0
    results = read_results(tmp_path)
    assert results["stop_reason"] == reason
    assert f"({reason}) after {results['global_step']} steps" in capfd.readouterr().out


@pytest.mark.slow
def test_max_time_stops_after_a_block_and_restores_the_best_epoch_seen(
    tmp_path: Path, mnist_root: Path, capfd
) -> None:
    # The whole 2-vs-3 split: blocks of 10 steps, so a check after every step would stop
    # at a multiple of 10 only by chance. Nothing else stops it within two seconds.
    steps = steps_an_epoch(mnist_root, 20000)
    limits = ["--trainer.max_time=00:00:00:02", "--trainer.max_epochs=100000",
              "--early_stopping.patience=100000"]  # fmt: skip
    assert _main(limits, tmp_path, mnist_root, run=WHOLE) == 0
    results = read_results(tmp_path)
    assert results["stop_reason"] == "max_time reached"
    assert "(max_time reached) after" in capfd.readouterr().out
    assert results["global_step"] % (steps // B) == 0 and results["global_step"] >= steps
    logged = {e.step: e.value for e in events(run_dir(tmp_path)).Scalars("val/loss")}
    ends = {step // steps - 1: logged[step] for step in logged if step % steps == 0}
    best = min(ends, key=ends.get)  # the best epoch seen, by its end's validation loss
    assert results["best_epoch"] == best and results["val/loss"] == pytest.approx(ends[best])
