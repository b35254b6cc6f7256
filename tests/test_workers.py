"""A sweep's workers: each run starts from a new process's state and leaves none behind."""

from __future__ import annotations

import logging
import os
import random
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities import data as lightning_data
from lightning.pytorch.utilities import rank_zero_only
from lightning_utilities.core.rank_zero import WarningCache

from mnist_linear import workers


@pytest.fixture(autouse=True)
def _the_sessions_fresh_state_kept() -> Iterator[None]:
    """These tests remember a fresh state of their own; later in-process runs keep the one
    the session remembered before any test trained (conftest)."""
    saved = dict(workers._fresh)
    yield
    workers._fresh.clear()
    workers._fresh.update(saved)


def _process_state() -> dict[str, object]:
    loggers = [logging.getLogger(), *map(logging.getLogger, logging.Logger.manager.loggerDict)]
    return {
        "environ": dict(os.environ),
        "argv": list(sys.argv),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "dtype": torch.get_default_dtype(),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
        "warning filters": list(warnings.filters),
        "loggers": {lg.name: (lg.level, list(lg.filters), list(lg.handlers)) for lg in loggers},
        "rank": rank_zero_only.rank,
    }


def _not_this(record: logging.LogRecord) -> bool:
    return False


def test_a_run_leaves_its_process_as_it_found_it(tmp_path: Path) -> None:
    workers.remember_fresh_state()
    before = _process_state()
    with workers.fresh_state(tmp_path / "train.log"):
        assert sys.argv == before["argv"][:1]
        os.environ["PL_GLOBAL_SEED"] = "7"  # what seed_everything and DDP set
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(3 - min(torch.get_num_threads(), 2))
        torch.use_deterministic_algorithms(True)
        torch.set_default_dtype(torch.float64)
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
        warnings.simplefilter("error")
        logging.getLogger("lightning.pytorch").setLevel(logging.CRITICAL)
        logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_this)
        logging.getLogger("lightning.pytorch").addHandler(logging.NullHandler())
        rank_zero_only.rank = 3
        sys.argv.append("--seed_everything=1")
        assert _process_state() != before
    assert _process_state() == before


def test_what_a_run_prints_goes_to_its_log_file_descriptors_too(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    workers.remember_fresh_state()
    log = tmp_path / "train.log"
    with capsys.disabled():  # the process's own standard output and error, as in a worker
        with workers.fresh_state(log):
            print("from print")
            print("from stderr", file=sys.stderr)
            os.write(1, b"from file descriptor 1\n")  # what C code and subprocesses write
        with workers.fresh_state(log):  # appended
            print("second run")
    lines = log.read_text().splitlines()
    assert sorted(lines) == sorted(
        ["from print", "from stderr", "from file descriptor 1", "second run"]
    )


def test_every_run_starts_from_the_random_state_of_a_new_worker() -> None:
    workers.remember_fresh_state()
    with workers.fresh_state():
        first = (torch.rand(3), np.random.rand(3), random.random())
        torch.rand(100), np.random.rand(100), random.random()
    with workers.fresh_state():
        second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_lightnings_once_per_process_messages_are_shown_again_by_the_next_run() -> None:
    # The one place the workers rely on Lightning's internals: its module-level
    # warning_cache objects. This fails if Lightning stops keeping them there.
    cache = lightning_data.warning_cache
    assert isinstance(cache, WarningCache)
    workers.remember_fresh_state()
    with workers.fresh_state():
        cache.warn("shown once per process")
        assert "shown once per process" in cache
    assert "shown once per process" not in cache


@pytest.mark.parametrize("code, expected", [(None, 0), (0, 0), (2, 2), ("a message", 1)])
def test_a_runs_exit_is_its_exit_code(code: object, expected: int, monkeypatch) -> None:
    import mnist_linear.cli as cli

    def make_cli(arguments: list[str]) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(cli, "make_cli", make_cli)
    assert workers._run([]) == expected
