"""TensorBoard, as users open it: a real server on loopback, read through its HTTP API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import IMAGE_TAGS, SCALAR_TAGS, run_dir


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_server_serves_the_scalar_and_image_tags(logistic_run: Path) -> None:
    logdir = run_dir(logistic_run).parent
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            f"--logdir={logdir}",
            "--host=127.0.0.1",
            "--port=0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            assert line or server.poll() is None, "TensorBoard exited before serving"
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            port = int(found.group(1)) if found else None
        assert port is not None, "TensorBoard did not announce its port"
        base = f"http://127.0.0.1:{port}/data/plugin"
        scalars, images = {}, {}
        while time.monotonic() < deadline and not (scalars and images):
            scalars = _get(f"{base}/scalars/tags").get("version_0", {})
            images = _get(f"{base}/images/tags").get("version_0", {})
            time.sleep(0.5)
        assert set(scalars) >= SCALAR_TAGS
        assert set(images) >= IMAGE_TAGS
        assert "hp_metric" not in scalars
        series = _get(f"{base}/scalars/scalars?run=version_0&tag=val%2Facc")
        assert len(series) == 30 and all(0.9 < value <= 1 for _, _, value in series)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
