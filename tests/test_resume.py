"""Resuming never touches another run, and a run folder records what trained its checkpoints."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import (
    REPO,
    SMALL,
    bare_trainer,
    events,
    exit_code_in_process,
    run_dir,
    stopping_state,
    train_command,
    train_here,
    train_in_process,
    two_vs_three,
)

from mnist_linear.folders import RunFolder, RunFolderError
from mnist_linear.locks import owner
from mnist_linear.model import LinearClassifier


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """The run folder of a 2-epoch logistic run on 2000 training images."""
    root = tmp_path_factory.mktemp("two_epochs")
    done = train_here(*SMALL, "--trainer.max_epochs=2", root=root, mnist=mnist_root)
    assert done == 0
    return run_dir(root)


def _copy_last(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "elsewhere" / "last.ckpt"
    copy.parent.mkdir()
    shutil.copy(run / "checkpoints" / "last.ckpt", copy)
    return copy


def _in_process(args: list[str], monkeypatch: pytest.MonkeyPatch | None = None) -> int:
    """``train.py ARGS`` in this process: its exit code."""
    return exit_code_in_process(*args)


def test_a_resume_from_a_copied_folder_leaves_the_original_run_whole(
    two_epochs: Path, tmp_path: Path, mnist_root: Path
) -> None:
    before = _snapshot(two_epochs)
    copy = tmp_path / "lightning_logs" / "copy"
    shutil.copytree(two_epochs, copy)
    last = copy / "checkpoints" / "last.ckpt"
    done = train_here(*SMALL, "--trainer.max_epochs=4", f"--ckpt_path={last}", root=tmp_path,
                     mnist=mnist_root)  # fmt: skip
    assert done == 0
    assert _snapshot(two_epochs) == before
    assert [p.name for p in (copy / "checkpoints").glob("best-*.ckpt")] == [
        "best-epoch=3-step=36.ckpt"  # its own previous best replaced, in its own folder
    ]


def test_a_resume_from_a_copied_checkpoint_leaves_the_original_run_whole(
    two_epochs: Path, tmp_path: Path, mnist_root: Path
) -> None:
    before = _snapshot(two_epochs)
    assert any(name.startswith("checkpoints/best-") for name in before)
    copy = _copy_last(two_epochs, tmp_path)
    root = tmp_path / "resumed"
    done = train_here(*SMALL, "--trainer.max_epochs=4", f"--ckpt_path={copy}", root=root,
                     mnist=mnist_root)  # fmt: skip
    assert done == 0
    assert _snapshot(two_epochs) == before  # no file of the other run removed or rewritten
    resumed = run_dir(root)
    assert len(list((resumed / "checkpoints").glob("best-*.ckpt"))) == 1
    assert json.loads((resumed / "results.json").read_text())["global_step"] == 36
    segments = json.loads((resumed / "segments.json").read_text())
    assert [s["first_step"] for s in segments] == [0, 18]
    assert segments[1]["resumed_from"] == str(copy)
    changed = segments[1]["changed"]
    assert changed.pop("trainer.max_epochs") == ["2", "4"]
    assert list(changed) == ["trainer.default_root_dir"]  # where it writes: allowed
    assert yaml.safe_load((resumed / "config.yaml").read_text())["trainer"]["max_epochs"] == 4


def test_a_resume_with_nothing_left_to_train_still_holds_the_best_checkpoint(
    two_epochs: Path, tmp_path: Path, mnist_root: Path
) -> None:
    copy = _copy_last(two_epochs, tmp_path)
    root = tmp_path / "resumed"
    done = train_here(*SMALL, "--trainer.max_epochs=2", f"--ckpt_path={copy}", root=root,
                     mnist=mnist_root)  # fmt: skip
    assert done == 0
    (original,) = (two_epochs / "checkpoints").glob("best-*.ckpt")
    (best,) = (run_dir(root) / "checkpoints").glob("best-*.ckpt")
    assert best.name == original.name
    expected = torch.load(original, weights_only=True)["state_dict"]
    got = torch.load(best, weights_only=True)["state_dict"]
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert (run_dir(root) / "config.yaml").is_file()


CHANGES = [
    (("--model.learning_rate=0.5", "--data.batch_size=20"),
     ("data.batch_size 40 -> 20", "model.learning_rate 0.2 -> 0.5")),
    (("--model.momentum=0.9",), ("model.momentum 0.0 -> 0.9",)),
    (("--data.classes=null",), ("data.classes [2, 3] -> null",)),
    (("--annealing.T=10",), ("annealing.T 1000.0 -> 10.0",)),
    (("--early_stopping.patience=1",), ("early_stopping.patience 3 -> 1",)),
    (("--seed_everything=7",), ("seed_everything 42 -> 7",)),
    (("--trainer.precision=64-true",), ("trainer.precision null -> \"64-true\"",)),
]  # fmt: skip


@pytest.mark.parametrize(("args", "named"), CHANGES, ids=lambda a: " ".join(a))
def test_a_resume_that_would_change_the_run_is_refused_and_changes_nothing(
    args: tuple[str, ...], named: tuple[str, ...], two_epochs: Path, tmp_path: Path,
    mnist_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    before = _snapshot(two_epochs.parent)
    last = two_epochs / "checkpoints" / "last.ckpt"
    code = _in_process([
        *SMALL, "--trainer.max_epochs=4", f"--data.data_dir={mnist_root}", *args,
        f"--trainer.default_root_dir={two_epochs.parents[1]}", f"--ckpt_path={last}",
    ], monkeypatch)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --ckpt_path: a resume continues") and err.count("\n") == 1
    for change in named:
        assert change in err
    assert _snapshot(two_epochs.parent) == before  # config.yaml included: nothing written


def test_a_checkpoint_without_a_record_is_checked_by_its_saved_arguments_and_shapes(
    two_epochs: Path, tmp_path: Path, mnist_root: Path, capsys, monkeypatch
) -> None:
    checkpoint = torch.load(two_epochs / "checkpoints" / "last.ckpt", weights_only=True)
    del checkpoint["mnist_linear_record"]  # as written by another program
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    base = [*SMALL, f"--data.data_dir={mnist_root}", f"--trainer.default_root_dir={tmp_path}",
            f"--ckpt_path={old}"]  # fmt: skip
    assert _in_process([*base, "--model.l2_lambda=0.1"], monkeypatch) == 2
    assert "model.l2_lambda 0.0 -> 0.1" in capsys.readouterr().err
    del checkpoint["hyper_parameters"], checkpoint["datamodule_hyper_parameters"]
    torch.save(checkpoint, old)
    assert _in_process([*base, "--data.classes=null"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "holds weights of shapes" in err and err.count("\n") == 1
    assert not (tmp_path / "lightning_logs").exists()


def test_a_configured_logger_without_a_version_resumes_in_its_own_folder(
    tmp_path: Path, mnist_root: Path, monkeypatch
) -> None:
    logger = ["--trainer.logger=TensorBoardLogger", f"--trainer.logger.save_dir={tmp_path}",
              "--trainer.logger.name=mine"]  # fmt: skip
    base = [
        *SMALL,
        *logger,
        f"--data.data_dir={mnist_root}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    assert _in_process([*base, "--trainer.max_epochs=1"], monkeypatch) == 0
    last = tmp_path / "mine" / "version_0" / "checkpoints" / "last.ckpt"
    assert _in_process([*base, "--trainer.max_epochs=2", f"--ckpt_path={last}"], monkeypatch) == 0
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["version_0"]
    results = json.loads((tmp_path / "mine" / "version_0" / "results.json").read_text())
    assert results["global_step"] == 18


def _weights_only_by_lightning(mnist_root: Path, path: Path) -> None:
    data = two_vs_three(mnist_root, train_size=2000)
    trainer = bare_trainer(max_steps=1)
    trainer.fit(LinearClassifier(2, learning_rate=0.2), datamodule=data)
    trainer.save_checkpoint(path, weights_only=True)


@pytest.mark.parametrize("made_by", ["keys removed", "save_checkpoint(weights_only=True)"])
def test_a_weights_only_checkpoint_is_refused_as_loadable_but_not_resumable(
    made_by: str, two_epochs: Path, tmp_path: Path, mnist_root: Path, capsys, monkeypatch
) -> None:
    path = tmp_path / "weights.ckpt"
    if made_by == "keys removed":
        checkpoint = torch.load(two_epochs / "checkpoints" / "last.ckpt", weights_only=True)
        for key in ("optimizer_states", "loops", "callbacks"):
            del checkpoint[key]
        torch.save(checkpoint, path)
    else:
        _weights_only_by_lightning(mnist_root, path)
    root = tmp_path / "root"
    code = _in_process([*SMALL, f"--data.data_dir={mnist_root}",
                        f"--trainer.default_root_dir={root}", f"--ckpt_path={path}"],
                       monkeypatch)  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: --ckpt_path: {path} holds weights only, without the optimizer's state: it can "
        "be loaded with LinearClassifier.load_from_checkpoint, not resumed\n"
    )
    assert not root.exists()
    assert LinearClassifier.load_from_checkpoint(path).linear.weight.shape == (1, 784)


def test_a_logger_version_naming_another_run_is_refused_and_changes_nothing(
    two_epochs: Path, mnist_root: Path, capsys, monkeypatch
) -> None:
    root = two_epochs.parents[1]
    before = _snapshot(root)
    code = _in_process([
        *SMALL, "--trainer.max_epochs=1", "--model.learning_rate=0.05",
        f"--data.data_dir={mnist_root}", f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={root}", "--trainer.logger.version=0",
    ], monkeypatch)  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: --trainer.logger.version 0: {two_epochs} holds another run (its config.yaml, "
        "checkpoints or results.json), and a run never writes into another run's folder; "
        f"resume that run with --ckpt_path {two_epochs / 'checkpoints' / 'last.ckpt'}, or give "
        "another version\n"
    )
    assert _snapshot(root) == before


@pytest.mark.parametrize(
    "flag, message",
    [("--trainer.max_epochs=1", "--trainer.max_epochs must be at least 2 to resume this "
      "checkpoint, which has reached epoch 1 (counted from 0): a resume may extend a run, not "
      "shorten it; got 1"),
     ("--trainer.max_steps=5", "--trainer.max_steps must be at least 18 to resume this "
      "checkpoint, which has trained 18 steps: a resume may extend a run, not shorten it; got 5")],
)  # fmt: skip
def test_a_resume_may_extend_a_run_but_not_shorten_it(
    flag: str, message: str, two_epochs: Path, mnist_root: Path, capsys, monkeypatch
) -> None:
    # two_epochs trained epochs 0 and 1, 9 steps each: 18 steps.
    root = two_epochs.parents[1]
    before = _snapshot(root)
    last = two_epochs / "checkpoints" / "last.ckpt"
    code = _in_process([*SMALL, flag, f"--data.data_dir={mnist_root}",
                        f"--trainer.default_root_dir={root}", f"--ckpt_path={last}"],
                       monkeypatch)  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert _snapshot(root) == before  # config.yaml and results.json as they were


def test_seed_everything_true_resumes_as_the_seed_it_stood_for(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lightning 2.6's seed_everything(None), without PL_GLOBAL_SEED in the environment, sets 0.
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    first = train_here(*SMALL, "--trainer.max_epochs=1", "--seed_everything=true", root=tmp_path,
                      mnist=mnist_root)  # fmt: skip
    assert first == 0
    folder = run_dir(tmp_path)
    assert yaml.safe_load((folder / "config.yaml").read_text())["seed_everything"] == 0
    last = folder / "checkpoints" / "last.ckpt"
    resumed = train_here(*SMALL, "--trainer.max_epochs=2", "--seed_everything=true",
                        f"--ckpt_path={last}", root=tmp_path, mnist=mnist_root)  # fmt: skip
    assert resumed == 0
    segments = json.loads((folder / "segments.json").read_text())
    assert segments[1]["changed"] == {"trainer.max_epochs": ["1", "2"]}
    assert yaml.safe_load((folder / "config.yaml").read_text())["seed_everything"] == 0


def test_a_resume_in_a_new_folder_that_finds_no_better_epoch_still_holds_the_best_checkpoint(
    tmp_path: Path, mnist_root: Path
) -> None:
    # At a constant rate of 1.0 the validation loss of these 2000 images falls in epoch 2
    # and rises in epoch 3 (0.099, then 0.115): the resumed epoch finds no better one.
    run = (*SMALL, "--model.learning_rate=1.0", "--annealing.T=null",
           "--early_stopping.patience=10")  # fmt: skip
    first = train_here(*run, "--trainer.max_epochs=3", root=tmp_path / "first", mnist=mnist_root)
    assert first == 0
    (original,) = (run_dir(tmp_path / "first") / "checkpoints").glob("best-*.ckpt")
    copy = _copy_last(run_dir(tmp_path / "first"), tmp_path)
    root = tmp_path / "resumed"
    done = train_here(*run, "--trainer.max_epochs=4", f"--ckpt_path={copy}", root=root,
                     mnist=mnist_root)  # fmt: skip
    assert done == 0
    state = stopping_state(run_dir(root) / "checkpoints" / "last.ckpt")
    assert len(state["history"]) == 4 and state["best_epoch"] == 2  # trained, no new best
    (best,) = (run_dir(root) / "checkpoints").glob("best-*.ckpt")
    assert best.name == original.name == "best-epoch=2-step=27.ckpt"
    expected = torch.load(original, weights_only=True)["state_dict"]
    got = torch.load(best, weights_only=True)["state_dict"]
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_a_resume_with_nothing_left_to_train_reports_the_restored_weights(
    tmp_path: Path, mnist_root: Path
) -> None:
    # Lightning skips on_train_start and on_train_end when no epoch is left: the early-
    # stopping callback restores the best epoch at on_fit_end, before results.json is made.
    run = (*SMALL, "--model.learning_rate=1.0", "--annealing.T=null",
           "--early_stopping.patience=10", "--trainer.max_epochs=4",
           f"--data.data_dir={mnist_root}", f"--trainer.default_root_dir={tmp_path}",
           "--trainer.enable_progress_bar=false")  # fmt: skip
    train_in_process(*run)
    folder = run_dir(tmp_path)
    before = json.loads((folder / "results.json").read_text())
    assert before["best_epoch"] < before["stopped_epoch"] == 3  # the last weights are not the best
    train_in_process(*run, f"--ckpt_path={folder / 'checkpoints' / 'last.ckpt'}")
    after = json.loads((folder / "results.json").read_text())
    assert {k: v for k, v in after.items() if k != "seconds"} == {
        k: v for k, v in before.items() if k != "seconds"
    }


@pytest.mark.slow
def test_a_resume_in_the_second_its_run_began_is_read_after_it(
    tmp_path: Path, mnist_root: Path
) -> None:
    # TensorBoard reads event files in name order: second, host, process ID. A resume
    # whose file sorted first would purge, at its checkpoint's step, all the run logged.
    common = (f"--config={REPO / 'configs' / 'logistic.yaml'}", "--data.train_size=2000",
              f"--data.data_dir={mnist_root}", f"--trainer.default_root_dir={tmp_path}",
              "--trainer.enable_progress_bar=false")  # fmt: skip
    train_in_process(*common, "--trainer.max_epochs=1")
    folder = run_dir(tmp_path)
    (first,) = folder.glob("events.out.tfevents.*")
    # As if made by a process with a high ID, in the coming second.
    first.rename(
        folder / f"events.out.tfevents.{int(time.time()) + 1}.{socket.gethostname()}.99999999.0"
    )
    train_in_process(*common, "--trainer.max_epochs=2",
                     f"--ckpt_path={folder / 'checkpoints' / 'last.ckpt'}")  # fmt: skip
    steps = [e.step for e in events(folder).Scalars("val/loss")]
    assert steps == list(range(1, 19))  # 9 steps an epoch, each evaluated


def _copied(run: Path, root: Path) -> Path:
    """A copy of ``run`` as ``root``'s ``lightning_logs/version_0``."""
    copy = root / "lightning_logs" / "version_0"
    shutil.copytree(run, copy)
    return copy


def test_a_run_folder_another_live_process_writes_is_refused_and_a_dead_ones_taken_over(
    two_epochs: Path, tmp_path: Path, mnist_root: Path, capsys
) -> None:
    run = _copied(two_epochs, tmp_path)
    before = _snapshot(run)
    last = run / "checkpoints" / "last.ckpt"
    resume = (*SMALL, "--trainer.max_epochs=3", f"--ckpt_path={last}")
    # A process that lives (PID 1, which always does) writes there: a second resume at once.
    (run / ".lock").write_text(owner(1) + "\n")
    assert train_here(*resume, root=tmp_path, mnist=mnist_root) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ckpt_path: the run folder {run} is being written by PID ")
    assert err.count("\n") == 1
    assert _snapshot(run) == {**before, ".lock": _snapshot(run)[".lock"]}  # nothing changed
    # A logger's version naming a folder another run has just made and holds, likewise;
    # the folder stays.
    other = tmp_path / "lightning_logs" / "version_9"
    other.mkdir()
    (other / ".lock").write_text(owner(1) + "\n")
    logger = ("--trainer.logger=TensorBoardLogger", f"--trainer.logger.save_dir={tmp_path}",
              "--trainer.logger.version=9")  # fmt: skip
    assert train_here(*SMALL, *logger, root=tmp_path, mnist=mnist_root) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --trainer.logger.version 9: the run folder {other} is being ")
    assert [p.name for p in other.iterdir()] == [".lock"]
    # The process that held it ended (killed outright): the resume takes it over, and
    # lets go when it ends.
    (run / ".lock").write_text(f"999999999@{socket.gethostname()}:1\n")
    assert train_here(*resume, root=tmp_path, mnist=mnist_root) == 0
    assert not (run / ".lock").exists()
    assert json.loads((run / "results.json").read_text())["stopped_epoch"] == 2


@pytest.mark.slow
def test_runs_started_at_once_with_one_logger_version_never_share_its_folder(
    tmp_path: Path, mnist_root: Path
) -> None:
    command = train_command(*SMALL, "--trainer.max_epochs=1", "--trainer.logger=TensorBoardLogger",
                            f"--trainer.logger.save_dir={tmp_path}", "--trainer.logger.version=7",
                            root=tmp_path, mnist=mnist_root)  # fmt: skip
    runs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=240) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 2], [err[-2000:] for _, err in outputs]
    (refused,) = [err for (_, err), run in zip(outputs, runs, strict=True) if run.returncode == 2]
    assert refused.startswith("error: --trainer.logger.version 7: ") and refused.count("\n") == 1
    folder = tmp_path / "lightning_logs" / "version_7"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert json.loads((folder / "results.json").read_text())["global_step"] == 9
    assert not (folder / ".lock").exists()


def _hold_at_once(run: Path, start: Any, tried: Any, held: Any) -> None:
    folder = RunFolder()
    folder.path = run
    start.wait(timeout=30)
    try:
        folder.hold()
        held.put(os.getpid())
    except RunFolderError:
        pass
    finally:
        tried.wait(timeout=30)  # each holds on until both have tried


@pytest.mark.parametrize("left", ["nothing", "a lock whose process ended"])
def test_processes_that_hold_a_run_folder_at_the_same_moment_get_it_once(
    left: str, tmp_path: Path
) -> None:
    if left != "nothing":
        (tmp_path / ".lock").write_text(f"999999999@{socket.gethostname()}:1\n")
    context = multiprocessing.get_context("fork")
    start, tried, held = context.Barrier(2), context.Barrier(2), context.Queue()
    for _ in range(20):
        processes = [context.Process(target=_hold_at_once, args=(tmp_path, start, tried, held))
                     for _ in range(2)]  # fmt: skip
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [p.exitcode for p in processes] == [0, 0]
        assert [held.get(timeout=5)] and held.empty()  # one of the two, never both


def test_a_resume_of_a_run_still_training_is_refused(
    two_epochs: Path, tmp_path: Path, mnist_root: Path, capsys
) -> None:
    run = _copied(two_epochs, tmp_path)
    before = _snapshot(run)
    # The run's own process, still training: it holds the folder's lock.
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(run / ".lock")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        last = run / "checkpoints" / "last.ckpt"
        resume = (*SMALL, "--trainer.max_epochs=3", f"--ckpt_path={last}")
        assert train_here(*resume, root=tmp_path, mnist=mnist_root) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ckpt_path: the run folder {run} is being written by ")
    assert {k: v for k, v in _snapshot(run).items() if k != ".lock"} == before
    # Once that process has ended, however it ended, the resume goes on.
    assert train_here(*resume, root=tmp_path, mnist=mnist_root) == 0
    assert not (run / ".lock").exists()
