"""The sweep: a grid × seeds, run in parallel, resumable, summarised with its spread."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, events, read_results, sweep_command, train_in_process
from tensorboard.plugins.hparams import plugin_data_pb2

from mnist_linear.callbacks import LearningRateAnnealing
from mnist_linear.grid import Run, parse_grid, runs_of, split_values
from mnist_linear.locks import claim, release
from mnist_linear.resume import read_checkpoint
from mnist_linear.summary import METRICS
from mnist_linear.sweep import main, parse_args

NAMES = [f"model.l2_lambda={lam},seed={seed}" for lam in ("0", "0.01") for seed in (0, 1)]


def _sweep(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mnist_linear.sweep", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _folder(root: Path) -> Path:
    return root / "lightning_logs" / "logistic_l2"


# --- The grid -------------------------------------------------------------------------


def test_grid_values_split_on_commas_outside_brackets() -> None:
    assert split_values("0,0.0001") == ["0", "0.0001"]
    assert split_values("[2,3],[4,9],null") == ["[2,3]", "[4,9]", "null"]
    assert parse_grid("--data.classes=[2,3],[4,9]") == ("data.classes", ["[2,3]", "[4,9]"])


@pytest.mark.parametrize("entry", ["model.l2_lambda", "model.l2_lambda=", "=1,2", "k=1,,2"])
def test_malformed_grid_entries_are_refused(entry: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=V1,V2"):
        parse_grid(entry)


def test_runs_are_the_cartesian_product_times_the_seeds() -> None:
    grid = [("model.l2_lambda", ["0", "0.1"]), ("data.batch_size", ["20", "40", "80"])]
    runs = runs_of(grid, seeds=3)
    assert len(runs) == 2 * 3 * 3 == len({run.name for run in runs})
    assert runs[0].name == "model.l2_lambda=0,data.batch_size=20,seed=0"
    assert [run.name for run in runs_of(grid[:1], None)] == [
        "model.l2_lambda=0",
        "model.l2_lambda=0.1",
    ]


def test_a_seed_sets_both_seeds() -> None:
    run = Run((("model.l2_lambda", "0"),), seed=7)
    assert run.arguments() == ["--model.l2_lambda=0", "--seed_everything=7", "--data.seed=7"]


@pytest.mark.parametrize(
    "grid, named",
    [
        ("model.bogus=1,2", "model.bogus"),
        ("model.l2_lambda=abc", "abc"),
        ("model.l2_lambda=-1", "-1"),
        ("data.batch_size=", "data.batch_size"),
    ],
)
def test_a_bad_grid_is_refused_in_one_line_before_anything_trains(
    grid: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:
        main(["--config=configs/logistic.yaml", "--grid", grid, f"--root_dir={tmp_path}"])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert not (tmp_path / "lightning_logs").exists()


def test_dry_run_prints_the_commands_and_trains_nothing(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    main(["--grid", "model.l2_lambda=0,0.01", "--seeds=3", f"--root_dir={tmp_path}", "--dry_run",
          f"--data.data_dir={mnist_root}"])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6
    assert all(line.startswith("python -m mnist_linear.cli --config=") for line in lines)
    assert "--seed_everything=2 --data.seed=2" in lines[2]
    assert "--trainer.logger.version=model.l2_lambda=0.01,seed=0 " in lines[3]
    assert not (tmp_path / "lightning_logs").exists()


# --- A real sweep ------------------------------------------------------------------------


@pytest.mark.slow
def test_every_run_is_its_own_tensorboard_run_with_its_values(sweep_root: Path) -> None:
    folder = _folder(sweep_root)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == NAMES
    for name in NAMES:
        run = folder / name
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["l2_lambda"] == float(name.split(",")[0].split("=")[1])
        seed = int(name.rsplit("=", 1)[1])
        assert config["seed_everything"] == config["data"]["seed"] == seed
        assert len(list(run.glob("events.out.tfevents.*"))) == 1
        assert (run / "train.log").is_file() and (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_seeds_change_the_shuffling_and_so_the_result(sweep_root: Path) -> None:
    a, b = (json.loads((_folder(sweep_root) / n / "results.json").read_text()) for n in NAMES[:2])
    assert a["val/loss"] != b["val/loss"]


@pytest.mark.slow
def test_summary_is_the_mean_and_sample_std_of_the_runs_results(sweep_root: Path) -> None:
    folder = _folder(sweep_root)
    with open(folder / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["model.l2_lambda"] for row in rows] == ["0", "0.01"]
    assert list(rows[0])[:2] == ["model.l2_lambda", "runs"]
    for row, names in zip(rows, (NAMES[:2], NAMES[2:]), strict=True):
        results = [json.loads((folder / n / "results.json").read_text()) for n in names]
        assert row["runs"] == "2"
        for metric in METRICS:
            values = [r[metric] for r in results]
            assert float(row[f"{metric} mean"]) == pytest.approx(statistics.fmean(values))
            assert float(row[f"{metric} std"]) == pytest.approx(statistics.stdev(values))
    table = (folder / "summary.md").read_text()
    assert table.startswith("| model.l2_lambda | runs | train/acc mean |")


@pytest.mark.slow
def test_hparams_and_final_metrics_are_in_the_event_files(sweep_root: Path) -> None:
    run = _folder(sweep_root) / NAMES[3]
    logged = events(run)
    content = logged.PluginTagToContent("hparams")
    start = next(
        data.session_start_info
        for data in (plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values())
        if data.HasField("session_start_info")
    )
    hparams = start.hparams
    assert hparams["model.l2_lambda"].number_value == 0.01
    assert hparams["seed_everything"].number_value == hparams["data.seed"].number_value == 1
    assert hparams["model.learning_rate"].number_value == 0.2
    assert hparams["data.batch_size"].number_value == 40
    results = json.loads((run / "results.json").read_text())
    (val_acc,) = logged.Scalars("hp/val_acc")
    assert val_acc.value == pytest.approx(results["val/acc"])


@pytest.mark.slow
def test_rerunning_trains_only_the_runs_without_results(
    sweep_root: Path, mnist_root: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    root = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(sweep_root), str(root)], check=True)
    never = _folder(root) / NAMES[2]
    expected = json.loads((never / "results.json").read_text())
    for path in never.iterdir():  # as if killed before its first checkpoint
        if path.is_dir():
            subprocess.run(["rm", "-r", str(path)], check=True)
    (never / "results.json").unlink()
    monkeypatch.chdir(REPO)
    main(sweep_command(root, mnist_root)[3:])  # in this process; the runs in its workers
    out = capsys.readouterr().out
    assert "3 of 4 runs done already; 1 to train" in out
    trained = [line for line in out.splitlines() if line.startswith("[")]
    assert [line.split()[1].rstrip(":") for line in trained] == [NAMES[2]]
    got = json.loads((never / "results.json").read_text())
    assert _without(got, "seconds") == _without(expected, "seconds")  # started again, alike


def _interrupt_at_epoch_2(self: object, trainer: object, pl_module: object) -> None:
    if trainer.current_epoch == 2:  # last.ckpt holds epoch 1
        raise KeyboardInterrupt  # as Ctrl-C there would


@pytest.mark.slow
def test_a_run_interrupted_mid_way_resumes_to_the_uninterrupted_result(
    tmp_path: Path, mnist_root: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    sweep = ["--name=resume", "--grid", "model.l2_lambda=0.01", f"--data.data_dir={mnist_root}",
             "--data.train_size=2000", "--trainer.max_epochs=5",
             "--early_stopping.patience=5"]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    main([*sweep, f"--root_dir={whole}"])
    capsys.readouterr()
    main([*sweep, f"--root_dir={cut}", "--dry_run"])
    (command,) = capsys.readouterr().out.splitlines()
    # The sweep's own run, stopped by Ctrl-C at the start of its epoch 2 of 5.
    interrupt = signal.getsignal(signal.SIGINT)  # Lightning ignores a second Ctrl-C
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as stop:
        patch.setattr(LearningRateAnnealing, "on_train_epoch_start", _interrupt_at_epoch_2)
        train_in_process(*shlex.split(command)[3:])  # after python -m mnist_linear.cli
    signal.signal(signal.SIGINT, interrupt)
    assert stop.value.code == 1
    run = cut / "lightning_logs" / "resume" / "model.l2_lambda=0.01"
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert not (run / "results.json").exists()
    main([*sweep, f"--root_dir={cut}"])
    out = capsys.readouterr().out
    assert "0 of 1 runs done already; 1 to train" in out
    assert "[1/1] model.l2_lambda=0.01: val/acc" in out
    reference = whole / "lightning_logs" / "resume" / "model.l2_lambda=0.01"
    expected, got = (json.loads((f / "results.json").read_text()) for f in (reference, run))
    assert got["stopped_epoch"] == 4
    assert _without(got, "seconds") == _without(expected, "seconds")
    segments = json.loads((run / "segments.json").read_text())
    assert [s["first_step"] for s in segments] == [0, 2 * 9]  # resumed after epoch 1


@pytest.mark.slow
def test_a_failed_run_does_not_stop_the_others(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    # Validating every second epoch without a sanity check, Lightning sets up the
    # validation loader only after the first epoch: only the run finds that half of its
    # one batch is none, and train.py refuses that run alone.
    command = [c for c in sweep_command(tmp_path, mnist_root) if c != "--seeds=2"]
    command[command.index("--grid") + 1] = "trainer.limit_val_batches=0.5,1.0"
    every_second = ["--trainer.check_val_every_n_epoch=2", "--trainer.num_sanity_val_steps=0"]
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:
        main([*command[3:], *every_second])  # in this process; the runs in their own
    assert stop.value.code == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == ["error: 1 run(s) failed: trainer.limit_val_batches=0.5"]
    folder = tmp_path / "lightning_logs" / "logistic_l2"
    results = json.loads((folder / "trainer.limit_val_batches=1.0" / "results.json").read_text())
    assert results["stopped_epoch"] == 1  # both epochs trained
    assert "FAILED with exit code 2" in out
    log = (folder / "trainer.limit_val_batches=0.5" / "train.log").read_text()
    assert log.strip().splitlines()[-1].startswith("error: ") and "limit_val_batches" in log
    with open(folder / "summary.csv") as f:
        failed_row, row = csv.DictReader(f)
    assert (failed_row["runs"], failed_row["val/acc mean"]) == ("0", "")
    assert row["runs"] == "1" and float(row["val/acc mean"]) == results["val/acc"]
    assert row["val/acc std"] == ""  # no spread from one run


def test_missing_config_is_refused_before_any_training(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:
        main(["--config=configs/nope.yaml", f"--root_dir={tmp_path}"])
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().splitlines() == ["error: --config: no file at 'configs/nope.yaml'"]
    assert not (tmp_path / "lightning_logs").exists()


# --- What a sweep may count as done, and what it refuses before training ----------------


@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused_naming_each_run_and_key(
    sweep_root: Path, mnist_root: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    root = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(sweep_root), str(root)], check=True)
    (_folder(root) / NAMES[1] / "results.json").unlink()  # interrupted: last.ckpt only
    before = sorted(str(p) for p in root.rglob("*"))
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:
        main([*sweep_command(root, mnist_root)[3:], "--trainer.max_epochs=3"])
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines[:4] == [f"{name}: trainer.max_epochs 2 -> 3" for name in NAMES]
    assert len(lines) == 5 and lines[4].startswith("error: 4 run(s) in ")
    assert "--name" in lines[4] and out == ""
    assert sorted(str(p) for p in root.rglob("*")) == before  # nothing trained or written


def test_without_grid_the_sweep_runs_the_readmes_lambda_values() -> None:
    # README: "--grid model.l2_lambda=0,0.0001,0.001,0.01"; docs/sweeps.md: "Without
    # --grid, the λ values above."
    args, extra = parse_args([])
    assert args.grid == [("model.l2_lambda", ["0", "0.0001", "0.001", "0.01"])] and extra == []
    assert [run.name for run in runs_of(args.grid, 2)][:3] == [
        "model.l2_lambda=0,seed=0", "model.l2_lambda=0,seed=1", "model.l2_lambda=0.0001,seed=0",
    ]  # fmt: skip


def test_the_default_name_comes_from_the_config_and_the_grid_keys() -> None:
    args, _ = parse_args(["--config=configs/softmax.yaml", "--grid", "model.l2_lambda=0,1"])
    assert args.name == "softmax-model.l2_lambda"
    args, _ = parse_args(["--grid", "model.l2_lambda=0", "--grid", "data.batch_size=20"])
    assert args.name == "logistic-model.l2_lambda-data.batch_size"
    assert parse_args(["--name=mine"])[0].name == "mine"


@pytest.mark.parametrize(
    "grids, named",
    [
        (["data.batch_size=40,30000"], "--grid data.batch_size=30000: batch_size must be at most"),
        (["data.classes=[2,3],[4,4]"], "--grid data.classes=[4,4]: classes must be"),
        (["model.nesterov=true"], "--grid model.nesterov=true: nesterov must be false"),
        (["data.train_size=59000"], "--grid data.train_size=59000: train_size + val_size"),
        (
            ["model.momentum=0,0.9", "model.nesterov=false,true"],
            "--grid model.momentum=0,model.nesterov=true: nesterov must be false",
        ),
    ],
)
def test_a_grid_point_a_constructor_refuses_is_refused_before_anything_trains(
    grids: list[str], named: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    data = tmp_path / "data"
    grid = [argument for entry in grids for argument in ("--grid", entry)]
    with pytest.raises(SystemExit) as stop:
        main([*grid, f"--root_dir={tmp_path}", f"--data.data_dir={data}", "--dry_run"])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named}"), lines
    assert list(tmp_path.iterdir()) == []  # no run folder, no MNIST file


@pytest.mark.parametrize(
    "grid, refused",
    [
        # Lightning's own check, at fit time: half of the one validation batch is none.
        ("trainer.limit_val_batches=1.0,0.5", "trainer.limit_val_batches=0.5"),
        # The 2s and 3s among the first validation image: none.
        ("data.val_size=2000,1", "data.val_size=1"),
        # More than the 2s and 3s among the 2,000 training images.
        ("data.batch_size=40,1400", "data.batch_size=1400"),
    ],
)
def test_a_grid_point_train_py_refuses_once_it_has_the_data_is_refused_before_anything_trains(
    grid: str, refused: str, tmp_path: Path, mnist_root: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:  # the accepted point comes first in the grid
        main(["--grid", grid, f"--root_dir={tmp_path}", f"--data.data_dir={mnist_root}",
              "--data.train_size=2000", "--trainer.max_epochs=1"])  # fmt: skip
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --grid {refused}: "), lines
    option = refused.split("=")[0].rpartition(".")[2]
    assert option in lines[0].removeprefix(f"error: --grid {refused}: ")  # the reason names it
    assert out == "" and list(tmp_path.iterdir()) == []  # nothing trained, no folder


def test_dry_run_refuses_what_the_sweep_refuses(
    tmp_path: Path, mnist_root: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:
        main(["--grid", "data.batch_size=40,1400", f"--root_dir={tmp_path}", "--dry_run",
              f"--data.data_dir={mnist_root}", "--data.train_size=2000"])  # fmt: skip
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: --grid data.batch_size=1400: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "arguments, named",
    [
        (["--grid", "seed_everything=1,2"], "--grid seed_everything=1,2 with --seeds 2"),
        (["--grid", "data.seed=1,2"], "--grid data.seed=1,2 with --seeds 2"),
        (["--data.seed=3"], "--data.seed=3 with --seeds 2"),
        (["--seed_everything", "3"], "--seed_everything with --seeds 2"),
    ],
)
def test_a_seed_given_with_seeds_is_refused_not_overridden(
    arguments: list[str], named: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:
        main([*arguments, "--seeds=2", f"--root_dir={tmp_path}", "--dry_run"])
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith(f"error: {named}"), lines
    assert list(tmp_path.iterdir()) == []


def test_a_typo_in_a_passed_through_argument_is_blamed_on_it(capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:
        main(["--grid", "model.l2_lambda=0", "--trainer.max_epochz", "3", "--dry_run"])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: arguments passed to train.py: "), lines
    assert "--trainer.max_epochz" in lines[0] and "--grid" not in lines[0]


# --- Claims: one sweep trains a run ----------------------------------------------------


def _started(pid: int) -> int:
    """Field 22 of /proc/PID/stat: the process's start, in clock ticks since boot."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def test_a_run_is_claimed_once_and_a_stale_claim_is_taken_over(tmp_path: Path) -> None:
    guard, run, host = tmp_path / ".claims", tmp_path / "run", socket.gethostname()
    me = f"{os.getpid()}@{host}:{_started(os.getpid())}"
    assert claim(run, guard) is None
    assert (run / ".lock").read_text() == f"{me}\n"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (run / ".lock").write_text(f"{live.pid}@{host}:{_started(live.pid)}\n")
        assert claim(run, guard) == f"{live.pid}@{host}:{_started(live.pid)}"
        release(run)  # not this process's claim: kept
        assert (run / ".lock").read_text() == f"{live.pid}@{host}:{_started(live.pid)}\n"
        # A killed sweep's training, still running, holds the run.
        (run / ".lock").write_text(f"{dead.pid}@{host}\n{live.pid}@{host}:{_started(live.pid)}\n")
        assert claim(run, guard) == f"{dead.pid}@{host}"
        (run / ".lock").write_text(f"{dead.pid}@{host}\n")
        assert claim(run, guard) is None
        assert (run / ".lock").read_text() == f"{me}\n"
    finally:
        live.kill()
        live.wait()
    release(run)
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("pid", [os.getppid(), 1], ids=["parent", "init"])
def test_a_lock_naming_a_live_process_that_started_at_another_time_is_taken_over(
    pid: int, tmp_path: Path
) -> None:
    # The PID was reused: the process that wrote the lock is gone.
    guard, run, host = tmp_path / ".claims", tmp_path / "run", socket.gethostname()
    run.mkdir()
    (run / ".lock").write_text(f"{pid}@{host}:{_started(pid)}\n")
    assert claim(run, guard) == f"{pid}@{host}:{_started(pid)}"  # the right time: alive
    (run / ".lock").write_text(f"{pid}@{host}:{_started(pid) + 1}\n")
    assert claim(run, guard) is None
    assert (run / ".lock").read_text() == f"{os.getpid()}@{host}:{_started(os.getpid())}\n"


def test_a_lock_without_start_times_holds_only_while_its_process_runs_python(
    tmp_path: Path,
) -> None:
    guard, run, host = tmp_path / ".claims", tmp_path / "run", socket.gethostname()
    run.mkdir()
    python = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        (run / ".lock").write_text(f"{python.pid}@{host}\n")
        assert claim(run, guard) == f"{python.pid}@{host}"  # maybe an older sweep: waited for
        (run / ".lock").write_text(f"{other.pid}@{host}\n")
        assert claim(run, guard) is None  # no sweep is a `sleep`: the PID was reused
    finally:
        for process in (python, other):
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_sweep_waits_for_a_lock_of_another_host_and_says_how_to_clear_it(
    tmp_path: Path, mnist_root: Path
) -> None:
    run = _folder(tmp_path) / "model.l2_lambda=0"
    run.mkdir(parents=True)
    (run / ".lock").write_text(f"1234@elsewhere.{socket.gethostname()}:99\n")
    command = [*sweep_command(tmp_path, mnist_root), "--trainer.max_steps=3"]
    command[command.index("--grid") + 1] = "model.l2_lambda=0"
    command.remove("--seeds=2")
    sweep = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        line = sweep.stdout.readline()
        while "waiting" not in line:
            assert line, sweep.communicate()
            line = sweep.stdout.readline()
        assert line.startswith(
            f"model.l2_lambda=0: being trained by PID 1234 on elsewhere.{socket.gethostname()} "
        )
        assert f"remove {run / '.lock'}" in line
        time.sleep(1)
        assert sweep.poll() is None and not (run / "results.json").exists()  # it waits
        (run / ".lock").unlink()  # as the line says
        out, err = sweep.communicate(timeout=120)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, out + err
    assert "[1/1] model.l2_lambda=0: val/acc" in out and (run / "results.json").is_file()


@pytest.mark.slow
def test_two_sweeps_started_at_once_train_every_run_once(tmp_path: Path, mnist_root: Path) -> None:
    command = [c for c in sweep_command(tmp_path, mnist_root) if c != "--seeds=2"]
    command[-1] = "--trainer.max_epochs=1"
    command[command.index("--jobs=2")] = "--jobs=1"  # one worker each: two trainings at once
    sweeps = [
        subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [sweep.communicate(timeout=240) for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    folder = tmp_path / "lightning_logs" / "logistic_l2"
    for name in ("model.l2_lambda=0", "model.l2_lambda=0.01"):
        assert len(list((folder / name).glob("events.out.tfevents.*"))) == 1, outputs
        assert (folder / name / "train.log").read_text().count("Results: ") == 1
        assert not (folder / name / ".lock").exists()
    lines = [line for out, _ in outputs for line in out.splitlines() if line.startswith("[")]
    assert sum("val/acc" in line for line in lines) == 2, outputs  # each trained by one sweep
    for out, _ in outputs:  # the other's runs: waited for, or found done if it came late
        ended = [line for line in out.splitlines() if line.startswith("[")]
        done_already = int(out.split(" of 2 runs done already")[0].rsplit("\n", 1)[-1])
        assert len(ended) + done_already == 2, out
        assert all("val/acc" in line or "trained by another sweep" in line for line in ended)


# Runs of 5 epochs that stall at the start of epoch 2 (tests/stalls.py), their last.ckpt of
# epoch 1 written, until the test has signalled; their resume goes on.
STALL = ["--trainer.max_epochs=5", "--early_stopping.patience=5",
         "--trainer.callbacks+=stalls.Stall", "--trainer.callbacks.epoch=2"]  # fmt: skip
STALL_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)}  # fmt: skip


def _wait_for_stalls(sweep: subprocess.Popen, runs: list[Path]) -> None:
    deadline = time.monotonic() + 120
    while not all((run / "stalled").exists() for run in runs):
        assert time.monotonic() < deadline and sweep.poll() is None, sweep.communicate()
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_stops_the_trainings_and_a_rerun_finishes_them(
    signum: int, code: int, tmp_path: Path, mnist_root: Path, capsys, monkeypatch
) -> None:
    # SIGINT is Ctrl-C; SIGTERM, what a scheduler or `kill` sends. Either way each
    # training gets SIGINT and stops as train.py does on Ctrl-C.
    command = [c for c in sweep_command(tmp_path, mnist_root) if c != "--seeds=2"]
    command[-1:] = STALL
    sweep = subprocess.Popen(command, cwd=REPO, env=STALL_ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    runs = [_folder(tmp_path) / name for name in ("model.l2_lambda=0", "model.l2_lambda=0.01")]
    _wait_for_stalls(sweep, runs)
    children = Path(f"/proc/{sweep.pid}/task/{sweep.pid}/children").read_text().split()
    sweep.send_signal(signum)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == code, out + err
    assert "Traceback" not in err and children
    assert err.strip().splitlines()[-1].startswith("Interrupted: 2 of 2 runs not finished;")
    assert "python -m mnist_linear.sweep" in err
    assert out.count("interrupted; resumes from its last.ckpt") == 2, out
    deadline = time.monotonic() + 10  # the workers, and multiprocessing's resource tracker
    while any(_running(int(pid)) for pid in children):
        assert time.monotonic() < deadline, children
        time.sleep(0.05)
    for run in runs:
        assert not (run / "results.json").exists() and not (run / ".lock").exists()
        assert "Detected KeyboardInterrupt" in (run / "train.log").read_text()
        assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1
    monkeypatch.chdir(REPO)
    main(command[3:])  # the same command again, in this process
    out = capsys.readouterr().out
    assert "0 of 2 runs done already; 2 to train" in out and out.count(": val/acc") == 2
    for run in runs:
        assert json.loads((run / "results.json").read_text())["stopped_epoch"] == 4
        segments = json.loads((run / "segments.json").read_text())
        assert [s["first_step"] for s in segments] == [0, 2 * 9]  # resumed after epoch 1


# --- Workers: runs that share start-up, and give what train.py alone gives -------------


def _without(results: dict, *keys: str) -> dict:
    return {k: v for k, v in results.items() if k not in keys}


@pytest.mark.slow
def test_a_sweep_run_is_what_train_py_gives_alone_with_the_same_threads(
    sweep_root: Path, mnist_root: Path, tmp_path: Path
) -> None:
    run = _folder(sweep_root) / "model.l2_lambda=0.01,seed=1"
    swept = json.loads((run / "results.json").read_text())
    assert swept["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # --jobs=2
    assert yaml.safe_load((run / "config.yaml").read_text())["threads"] == swept["threads"]
    train_in_process(
        f"--config={REPO / 'configs' / 'logistic.yaml'}", f"--threads={swept['threads']}",
        "--model.l2_lambda=0.01", "--seed_everything=1", "--data.seed=1",
        "--data.train_size=2000", "--trainer.max_epochs=2", f"--data.data_dir={mnist_root}",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
    )  # fmt: skip
    assert _without(read_results(tmp_path), "seconds") == _without(swept, "seconds")


@pytest.mark.slow
def test_jobs_1_and_jobs_2_give_identical_summaries(
    sweep_root: Path, mnist_root: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    main([*sweep_command(tmp_path, mnist_root)[3:], "--jobs=1"])
    assert "4 to train, 1 at a time" in capsys.readouterr().out
    one, two = _folder(tmp_path), _folder(sweep_root)
    assert (one / "summary.csv").read_text() == (two / "summary.csv").read_text()
    for name in NAMES:
        a, b = (json.loads((f / name / "results.json").read_text()) for f in (one, two))
        assert _without(a, "seconds", "threads") == _without(b, "seconds", "threads")


@pytest.mark.slow
def test_a_runs_results_do_not_depend_on_its_thread_count(
    tmp_path: Path, mnist_root: Path, monkeypatch
) -> None:
    # Softmax, whose 40 x 784 by 784 x 10 products torch splits across threads when it may.
    monkeypatch.chdir(REPO)
    main(["--config=configs/softmax.yaml", "--grid=threads=1,2", "--jobs=1", "--name=threads",
          f"--root_dir={tmp_path}", f"--data.data_dir={mnist_root}", "--data.train_size=2000",
          "--trainer.max_epochs=1"])  # fmt: skip
    folder = tmp_path / "lightning_logs" / "threads"
    one, two = (json.loads((folder / f"threads={n}" / "results.json").read_text()) for n in (1, 2))
    assert (one["threads"], two["threads"]) == (1, 2)
    assert _without(one, "seconds", "threads") == _without(two, "seconds", "threads")
    # The second run, in the same worker, printed what the first printed (Lightning's
    # once-per-process messages included), numbers and times aside.
    logs = [(folder / f"threads={n}" / "train.log").read_text() for n in (1, 2)]
    words = [{line.split()[0] for line in log.splitlines() if line.strip()} for log in logs]
    assert words[0] == words[1] and all(log.count("Results: ") == 1 for log in logs)


@pytest.mark.slow
def test_a_killed_worker_takes_only_its_run_and_is_replaced(
    tmp_path: Path, mnist_root: Path, monkeypatch, capsys
) -> None:
    command = [c for c in sweep_command(tmp_path, mnist_root) if c != "--seeds=2"]
    command[command.index("--jobs=2")] = "--jobs=1"
    command[-1:] = [*STALL, "--trainer.callbacks.only=model.l2_lambda=0"]
    sweep = subprocess.Popen(command, cwd=REPO, env=STALL_ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    first = _folder(tmp_path) / "model.l2_lambda=0"
    _wait_for_stalls(sweep, [first])  # the run is under way, in epoch 2 of 5
    worker = int((first / ".lock").read_text().split()[1].partition("@")[0])
    os.kill(worker, signal.SIGKILL)
    out, err = sweep.communicate(timeout=180)
    assert sweep.returncode == 1, out + err
    assert "[1/2] model.l2_lambda=0: FAILED: its process was killed" in out
    assert "[2/2] model.l2_lambda=0.01: val/acc" in out  # in a new worker
    assert err.strip().splitlines()[-1] == "error: 1 run(s) failed: model.l2_lambda=0"
    assert not (first / "results.json").exists() and not (first / ".lock").exists()
    monkeypatch.chdir(REPO)
    main(command[3:])  # resumes the killed run
    assert "[1/1] model.l2_lambda=0: val/acc" in capsys.readouterr().out
    assert json.loads((first / "results.json").read_text())["stopped_epoch"] == 4
