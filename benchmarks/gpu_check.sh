#!/usr/bin/env bash
# The GPU check behind docs/gpu-and-scaling.md, in one go (well under 10 minutes on one GPU):
#   1. the tests marked gpu;
#   2. the shipped logistic and softmax configs on the GPU, in 32-true and bf16-mixed;
#   3. Lightning's cost per step and per evaluation on the GPU (benchmarks/speed.py).
# Needs what benchmarks/gpu_bundle.sh gathers in .whl/ (no network is used). Writes its
# logs and gpu_check.json (every run's results.json and wall time) under $OUT.
# ACCELERATOR=cpu EXTRA="--trainer.max_epochs 1" tries the script itself on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export MNIST_LINEAR_DATA="$PWD/.whl/data"  # the tests' data folder: verified, not built
python -m pip install --quiet --no-index --find-links .whl "jsonargparse[signatures]" pytest
ACCELERATOR=${ACCELERATOR:-gpu}
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if
           torch.cuda.is_available() else 'no GPU')" | tee "$OUT/device.txt"
tests=0  # a failing test is reported at the end; the measurements still run
python -m pytest -m gpu -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu_tests.txt" || tests=$?
runs="$OUT/runs"
for config in logistic softmax; do
    for precision in 32-true bf16-mixed; do
        start=$EPOCHREALTIME
        python train.py --config "configs/$config.yaml" --trainer.accelerator "$ACCELERATOR" \
            --trainer.precision "$precision" ${EXTRA:-} --data.data_dir .whl/data \
            --trainer.default_root_dir "$runs/$config-$precision" \
            --trainer.enable_progress_bar false 2>&1 | tail -6
        echo "$config $precision $(awk "BEGIN {print $EPOCHREALTIME - $start}") s" \
            | tee -a "$OUT/walls.txt"
    done
done
python benchmarks/speed.py --breakdown_only --accelerator "$ACCELERATOR" --data_dir .whl/data \
    | tail -1 | tee "$OUT/speed.json"
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
walls = {tuple(l.split()[:2]): float(l.split()[2]) for l in (out / "walls.txt").read_text().splitlines()}
report = {"device": (out / "device.txt").read_text().strip(), "runs": {}}
for (config, precision), wall in walls.items():
    (results,) = (out / "runs" / f"{config}-{precision}").glob("lightning_logs/version_*/results.json")
    report["runs"][f"{config} {precision}"] = {"wall_seconds": wall, **json.loads(results.read_text())}
report["speed"] = json.loads((out / "speed.json").read_text())
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
PY
rm -rf "$runs"  # only files two folders down come back; the numbers are in gpu_check.json
exit "$tests"
