"""Runs off the happy path: runs started together, Trainer flags, kills, damaged checkpoints."""

from __future__ import annotations

import errno
import json
import os
import resource
import runpy
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import REPO, read_results, run_dir, run_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from mnist_linear.callbacks import ValidationLossEarlyStopping
from mnist_linear.cli import CLI_KWARGS, MNISTLinearCLI, main
from mnist_linear.data import MNISTSubsetDataModule
from mnist_linear.folders import claim_version
from mnist_linear.model import LinearClassifier
from mnist_linear.resume import read_checkpoint
from mnist_linear.run import AtomicCheckpointIO, AtomicTensorBoardLogger, RunResults

SMALL = (f"--config={REPO / 'configs' / 'logistic.yaml'}", "--data.train_size=2000")  # 10 steps


def _train_command(*args: str, root: Path, mnist: Path) -> list[str]:
    return [
        sys.executable, str(REPO / "train.py"), *args,
        f"--data.data_dir={mnist}", f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip


# --- Runs started together ---------------------------------------------------------------


def test_claimed_versions_are_distinct_and_skip_taken_ones(tmp_path: Path) -> None:
    (tmp_path / "version_3").mkdir(parents=True)
    (tmp_path / "version_x").mkdir()
    assert [claim_version(tmp_path) for _ in range(3)] == [4, 5, 6]


@pytest.mark.slow
def test_runs_started_together_in_one_folder_never_share_a_file(
    tmp_path: Path, mnist_root: Path
) -> None:
    seeds = (1, 2, 3, 4)
    runs = [
        subprocess.Popen(
            _train_command(
                *SMALL, "--trainer.max_steps=5", f"--seed_everything={seed}",
                root=tmp_path, mnist=mnist_root,
            ),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for seed in seeds
    ]  # fmt: skip
    outputs = [run.communicate(timeout=240) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, [err[-2000:] for _, err in outputs]
    folders = sorted((tmp_path / "lightning_logs").iterdir())
    assert [f.name for f in folders] == [f"version_{n}" for n in range(4)]
    printed = {line.split("Results: ")[1] for out, _ in outputs for line in out.splitlines()
               if line.startswith("Results: ")}  # fmt: skip
    assert printed == {str(f / "results.json") for f in folders}
    seen = set()
    for folder in folders:
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        seen.add(yaml.safe_load((folder / "config.yaml").read_text())["seed_everything"])
        results = folder / "results.json"
        assert json.loads(results.read_text())["global_step"] == 5
        assert stat.S_IMODE(results.stat().st_mode) == 0o666 & ~_umask()
    assert seen == set(seeds)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("logger", ["TensorBoardLogger", "CSVLogger"])
def test_a_configured_logger_without_a_version_gets_a_folder_of_its_own(
    logger: str, tmp_path: Path, mnist_root: Path, monkeypatch
) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])
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

    monkeypatch.setattr("sys.argv", ["train.py"])
    logger = ["--trainer.logger=TensorBoardLogger", f"--trainer.logger.save_dir={tmp_path}",
              "--trainer.logger.name=sweep", "--trainer.logger.version=point,seed=0"]  # fmt: skip
    assert _main([*logger, "--trainer.max_epochs=1"], tmp_path, mnist_root) == 0
    folder = tmp_path / "sweep" / "point,seed=0"
    last = folder / "checkpoints" / "last.ckpt"
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

FLAGS = [
    ("--trainer.overfit_batches=3",),
    ("--trainer.enable_checkpointing=false",),
    ("--trainer.fast_dev_run=true",),
    ("--trainer.limit_train_batches=4",),
    ("--trainer.max_steps=7",),
    ("--trainer.max_time=00:00:00:30",),
    ("--trainer.precision=bf16-mixed",),
    ("--trainer.precision=64-true",),
    ("--trainer.check_val_every_n_epoch=2", "--trainer.val_check_interval=1.0"),
    ("--trainer.num_sanity_val_steps=0",),
    ("--trainer.detect_anomaly=true",),
    ("--trainer.deterministic=false",),
    ("--trainer.enable_model_summary=false",),
    ("--trainer.logger=false",),
]
REFUSED = [("--trainer.limit_val_batches=0.5", "limit_val_batches")]


def _main(args: list[str], root: Path, mnist: Path) -> int:
    try:
        main(
            [
                *SMALL,
                "--trainer.max_epochs=2",
                f"--data.data_dir={mnist}",
                f"--trainer.default_root_dir={root}",
                "--trainer.enable_progress_bar=false",
                *args,
            ]
        )
    except SystemExit as stop:  # fmt: skip
        return stop.code
    return 0


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: " ".join(f))
def test_trainer_flag_runs_and_writes_everything_under_the_root(
    flags: tuple[str, ...], tmp_path: Path, mnist_root: Path, monkeypatch, capfd
) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    assert _main(list(flags), root, mnist_root) == 0
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing in the cwd
    results = read_results(root)
    assert 0.5 < results["val/acc"] <= 1
    if "--trainer.max_steps=7" in flags:
        assert results["global_step"] == 7
    if "--trainer.limit_train_batches=4" in flags:
        assert results["global_step"] == 8
    if "--trainer.enable_checkpointing=false" in flags:
        assert not (run_dir(root) / "checkpoints").exists()
    if "--trainer.logger=false" in flags:
        assert not list(run_dir(root).glob("events.out.tfevents.*"))
        assert (run_dir(root) / "checkpoints" / "last.ckpt").is_file()


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
    monkeypatch.setattr("sys.argv", ["train.py"])
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
    dm = MNISTSubsetDataModule(data_dir=str(mnist_root), classes=[2, 3], train_size=2000)
    dm.setup()
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


def test_a_write_that_finds_no_room_is_one_line_naming_the_file_and_exit_code_1(
    tmp_path: Path, mnist_root: Path
) -> None:
    # config.yaml (about 2 kB) fits under 5000 bytes, a checkpoint (about 12 kB) does not.
    done = subprocess.run(
        _train_command(*SMALL, "--trainer.max_epochs=1", "--trainer.logger=false",
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
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    assert yaml.safe_load(path.read_text()) == {"learning_rate": 0.2, "classes": [2, 3]}
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_the_default_logger_writes_hparams_yaml_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])
    args = [*SMALL, f"--trainer.default_root_dir={tmp_path}"]
    cli = MNISTLinearCLI(LinearClassifier, MNISTSubsetDataModule, args=args, **CLI_KWARGS)
    assert type(cli.trainer.logger) is AtomicTensorBoardLogger


def test_max_steps_stops_in_the_middle_of_a_block(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])
    # The whole 2-vs-3 split: 100 steps an epoch, ten blocks of 10.
    assert _main(["--data.train_size=20000", "--trainer.max_steps=15"], tmp_path, mnist_root) == 0
    results = read_results(tmp_path)
    assert results["global_step"] == 15
    events = EventAccumulator(str(run_dir(tmp_path)), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [10, 15]  # after each block


@pytest.mark.parametrize("flag, option", REFUSED)
def test_a_flag_that_cannot_apply_is_refused_in_one_line(
    flag: str, option: str, tmp_path: Path, mnist_root: Path, monkeypatch, capfd
) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])
    assert _main([flag], tmp_path, mnist_root) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and option in err[0], err
    assert not (tmp_path / "lightning_logs").exists()  # refused at fit time: no folder


def test_overfit_batches_trains_and_evaluates_the_first_batches_unshuffled(
    tmp_path: Path, mnist_root: Path, monkeypatch
) -> None:
    from mnist_linear.data import MNISTSubsetDataModule

    monkeypatch.setattr("sys.argv", ["train.py"])
    assert _main(["--trainer.overfit_batches=2", "--model.learning_rate=2.0",
                  "--trainer.max_epochs=30"], tmp_path, mnist_root) == 0  # fmt: skip
    results = read_results(tmp_path)
    assert results["global_step"] == 2 * (results["stopped_epoch"] + 1)  # two steps an epoch
    data = MNISTSubsetDataModule(str(mnist_root), classes=[2, 3], train_size=2000)
    data.setup()
    checkpoint = torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    model = LinearClassifier(2, learning_rate=1.0)
    model.load_state_dict({k: v for k, v in checkpoint["state_dict"].items() if "linear" in k})
    x, y = data.train_set.tensors
    assert (model.predict(x[:80]) == y[:80]).all()  # the 80 images fitted, in order
    assert results["train/acc"] < 1  # measured on the whole split at the end


# --- Early stopping: the recorded loss is the loss of the restored weights ----------------


@pytest.mark.slow
def test_restored_and_best_weights_are_those_of_the_recorded_evaluation(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4s and 9s: 98 batches an epoch, so the epoch's last evaluation comes before its end.
    monkeypatch.setattr("sys.argv", ["train.py"])
    assert _main(["--data.classes=[4,9]", "--data.train_size=20000", "--trainer.max_epochs=3"],
                 tmp_path, mnist_root) == 0  # fmt: skip
    folder = run_dir(tmp_path)
    results = read_results(tmp_path)
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("val/loss")}
    # Blocks of 10, 10, ..., 9, 9 steps: the epoch's last evaluation comes at its end.
    assert [step for step in logged if step <= 98] == [10, 20, 30, 40, 50, 60, 70, 80, 89, 98]
    state = _stopping(torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True))
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
    monkeypatch.setattr("sys.argv", ["train.py"])
    path = tmp_path / "damaged.ckpt"
    if damage == "truncated":
        data = (run_dir(logistic_run) / "checkpoints" / "last.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not a checkpoint":
        path = REPO / "README.md"
    with pytest.raises(SystemExit) as stop:
        main(["--config=configs/logistic.yaml", f"--ckpt_path={path}",
              f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --ckpt_path: "), err
    assert str(path) in err[0]
    assert "weights_only" not in err[0]  # no advice to load an unknown file unsafely


def test_an_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    saved = {
        "state_dict": {"w": torch.ones(3)},
        "global_step": 1,
        "epoch": 0,
        "optimizer_states": [],
    }
    io.save_checkpoint(saved, path)

    class Interrupted(Exception):
        pass

    class FailsToSave:
        def __reduce__(self) -> tuple:
            raise Interrupted

    with pytest.raises(Interrupted):
        io.save_checkpoint({"state_dict": {"w": FailsToSave()}}, path)  # fails mid-write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


def _stopping(checkpoint: dict) -> dict:
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ValidationLoss")]
    return state


def _wait_for_epochs(path: Path, epochs: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if read_checkpoint(path)["epoch"] >= epochs:
                return
        except Exception:  # not there yet, or being replaced
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach epoch {epochs}")


KILLED = (*SMALL, "--trainer.max_epochs=12", "--model.learning_rate=1.0")


@pytest.mark.slow
def test_a_killed_run_resumes_in_its_folder_to_the_uninterrupted_result(
    tmp_path: Path, mnist_root: Path
) -> None:
    whole = tmp_path / "whole"
    assert run_train(*KILLED, root=whole, mnist=mnist_root).returncode == 0
    root = tmp_path / "killed"
    process = subprocess.Popen(
        _train_command(*KILLED, root=root, mnist=mnist_root), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    last = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    _wait_for_epochs(last, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (last.parent.parent / "results.json").exists()
    resumed = run_train(*KILLED, f"--ckpt_path={last}", root=root, mnist=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in (root / "lightning_logs").iterdir()] == ["version_0"]
    expected, got = read_results(whole), read_results(root)
    for key in expected:
        if key != "seconds":
            assert got[key] == expected[key], key
    a, b = (torch.load(run_dir(r) / "checkpoints" / "last.ckpt", weights_only=True)
            for r in (whole, root))  # fmt: skip
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert _stopping(a)["history"] == _stopping(b)["history"]
    # One run in TensorBoard: two event files, no step logged twice once the purge applies.
    events = EventAccumulator(str(run_dir(root)), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("val/loss")]
    reference = EventAccumulator(str(run_dir(whole)), size_guidance={"scalars": 0})
    reference.Reload()
    assert steps == [e.step for e in reference.Scalars("val/loss")]


@pytest.mark.slow
def test_ctrl_c_stops_gracefully_without_results_and_leaves_a_resumable_checkpoint(
    tmp_path: Path, mnist_root: Path
) -> None:
    process = subprocess.Popen(
        _train_command(*KILLED, root=tmp_path, mnist=mnist_root), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    _wait_for_epochs(last, 2, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "KeyboardInterrupt" in output and "Traceback" not in output
    assert not (last.parent.parent / "results.json").exists()
    assert read_checkpoint(last)["epoch"] >= 2


# --- The split-accuracy script ----------------------------------------------------------


@pytest.mark.parametrize("classes", ["[2,3]", "null"])
def test_split_accuracy_script_reads_both_kinds_of_checkpoint(
    classes: str, tmp_path: Path, mnist_root: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])
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

    monkeypatch.setattr("sys.argv", ["train.py"])
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
     (["--trainer.max_steps=5"], "max_steps reached"),
     (["--trainer.max_time=00:00:00:01", "--trainer.max_epochs=100000",
       "--early_stopping.patience=100000", "--model.learning_rate=0.01"], "max_time reached")],
)  # fmt: skip
def test_the_stop_reason_names_the_limit_that_ended_training(
    flags: list[str], reason: str, tmp_path: Path, mnist_root: Path, monkeypatch, capfd
) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])
    assert _main(flags, tmp_path, mnist_root) == 0
    results = read_results(tmp_path)
    assert results["stop_reason"] == reason
    assert f"({reason}) after {results['global_step']} steps" in capfd.readouterr().out
    if reason == "max_time reached":
        assert results["stopped_epoch"] < 100000 - 1
