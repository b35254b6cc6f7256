"""The sweep: a grid × seeds, run in parallel, resumable, summarised with its spread."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, sweep_command
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mnist_linear.sweep import METRICS, Run, main, parse_grid, runs_of, split_values

NAMES = [f"model.l2_lambda={lam},seed={seed}" for lam in ("0", "0.01") for seed in (0, 1)]


def _sweep(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mnist_linear.sweep", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def _folder(root: Path) -> Path:
    return root / "lightning_logs" / "logistic_l2"


# --- The grid -------------------------------------------------------------------------


def test_grid_values_split_on_commas_outside_brackets() -> None:
    assert split_values("0,0.0001") == ["0", "0.0001"]
    assert split_values("[2,3],[4,9],null") == ["[2,3]", "[4,9]", "null"]
    assert parse_grid("--data.classes=[2,3],[4,9]") == ("data.classes", ["[2,3]", "[4,9]"])


@pytest.mark.parametrize("entry", ["model.l2_lambda", "model.l2_lambda=", "=1,2", "k=1,,2"])
def test_malformed_grid_entries_are_refused(entry: str) -> None:
    with pytest.raises(Exception, match="expected KEY=V1,V2"):
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
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    main(["--grid", "model.l2_lambda=0,0.01", "--seeds=3", f"--root_dir={tmp_path}", "--dry_run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6
    assert all(line.startswith("python -m mnist_linear.cli --config=") for line in lines)
    assert "--seed_everything=2 --data.seed=2" in lines[2]
    assert "--trainer.logger.version=model.l2_lambda=0.01,seed=0 " in lines[3]
    assert not (tmp_path / "lightning_logs").exists()


# --- A real sweep ------------------------------------------------------------------------


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


def test_seeds_change_the_shuffling_and_so_the_result(sweep_root: Path) -> None:
    a, b = (json.loads((_folder(sweep_root) / n / "results.json").read_text()) for n in NAMES[:2])
    assert a["val/loss"] != b["val/loss"]


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


def test_hparams_and_final_metrics_are_in_the_event_files(sweep_root: Path) -> None:
    run = _folder(sweep_root) / NAMES[3]
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
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
    (val_acc,) = events.Scalars("hp/val_acc")
    assert val_acc.value == pytest.approx(results["val/acc"])


def test_rerunning_trains_only_the_runs_without_results(
    sweep_root: Path, mnist_root: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    root = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(sweep_root), str(root)], check=True)
    lost = _folder(root) / NAMES[1]
    expected = json.loads((lost / "results.json").read_text())
    (lost / "results.json").unlink()  # as if killed after its last checkpoint
    never = _folder(root) / NAMES[2]
    for path in never.iterdir():  # as if killed before its first checkpoint
        if path.is_dir():
            subprocess.run(["rm", "-r", str(path)], check=True)
    (never / "results.json").unlink()
    monkeypatch.chdir(REPO)
    main(sweep_command(root, mnist_root)[3:])  # in this process; the runs in their own
    out = capsys.readouterr().out
    assert "2 of 4 runs done already; 2 to train" in out
    trained = [line for line in out.splitlines() if line.startswith("[")]
    assert sorted(line.split()[1].rstrip(":") for line in trained) == sorted(NAMES[1:3])
    got = json.loads((lost / "results.json").read_text())
    assert {k: v for k, v in got.items() if k != "seconds"} == {
        k: v for k, v in expected.items() if k != "seconds"
    }
    assert (never / "results.json").is_file()


def test_a_failed_run_does_not_stop_the_others(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    # batch 1000 is larger than the 2-vs-3 split of 2000 images, which only the data tells:
    # train.py refuses that run alone.
    command = [c for c in sweep_command(tmp_path, mnist_root) if c != "--seeds=2"]
    command[command.index("--grid") + 1] = "data.batch_size=1000,40"
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:
        main([*command[3:-1], "--trainer.max_steps=3"])  # in this process; the runs in their own
    assert stop.value.code == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == ["error: 1 run(s) failed: data.batch_size=1000"]
    folder = tmp_path / "lightning_logs" / "logistic_l2"
    results = json.loads((folder / "data.batch_size=40" / "results.json").read_text())
    assert results["global_step"] == 3
    assert "FAILED with exit code 2" in out
    with open(folder / "summary.csv") as f:
        failed_row, row = csv.DictReader(f)
    assert (failed_row["runs"], failed_row["val/acc mean"]) == ("0", "")
    assert row["runs"] == "1" and float(row["val/acc mean"]) == results["val/acc"]
    assert row["val/acc std"] == ""  # no spread from one run


def test_missing_config_is_refused_before_any_training(tmp_path: Path) -> None:
    done = _sweep("--config=configs/nope.yaml", f"--root_dir={tmp_path}")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == ["error: --config: no file at 'configs/nope.yaml'"]
    assert not (tmp_path / "lightning_logs").exists()
