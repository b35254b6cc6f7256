#!/usr/bin/env bash
# The GPU check behind docs/gpu-and-scaling.md, in one go (about 6 minutes on one GPU):
#   1. the tests marked gpu;
#   2. the shipped logistic and softmax configs on the GPU in 32-true and bf16-mixed, and
#      on the same machine's CPU in 32-true, each with its wall time;
#   3. Lightning's cost per step and per evaluation on the GPU (benchmarks/speed.py).
# Needs what benchmarks/gpu_bundle.sh gathers in .whl/ (no network is used): the wheels
# are installed into .whl/site, not into the machine's Python. Writes its logs and
# gpu_check.json (every run's results.json and wall time) under $OUT. A step that fails
# is reported there and the others still run; the exit status is the tests'.
# ACCELERATOR=cpu EXTRA="--trainer.max_epochs 1" tries the script itself on a CPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
python -m pip install --quiet --no-index --find-links .whl --target .whl/site \
    "jsonargparse[signatures]" pytest || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
export MNIST_LINEAR_DATA="$PWD/.whl/data"  # the tests' data folder: verified, not built
export CUBLAS_WORKSPACE_CONFIG=:4096:8     # the configs' deterministic mode on a GPU
ACCELERATOR=${ACCELERATOR:-gpu}
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if
           torch.cuda.is_available() else 'no GPU')" | tee "$OUT/device.txt"
python -m pytest -m gpu -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu_tests.txt"
tests=${PIPESTATUS[0]}
runs="$OUT/runs"
for run in "logistic 32-true $ACCELERATOR" "logistic bf16-mixed $ACCELERATOR" \
           "softmax 32-true $ACCELERATOR" "softmax bf16-mixed $ACCELERATOR" \
           "logistic 32-true cpu" "softmax 32-true cpu"; do
    read -r config precision accelerator <<< "$run"
    start=$EPOCHREALTIME
    python train.py --config "configs/$config.yaml" --trainer.accelerator "$accelerator" \
        --trainer.precision "$precision" ${EXTRA:-} --data.data_dir .whl/data \
        --trainer.default_root_dir "$runs/$config-$precision-$accelerator" \
        --trainer.enable_progress_bar false > "$OUT/$config-$precision-$accelerator.log" 2>&1
    code=$?
    tail -6 "$OUT/$config-$precision-$accelerator.log"
    echo "$config $precision $accelerator $(awk "BEGIN {print $EPOCHREALTIME - $start}") $code" \
        | tee -a "$OUT/walls.txt"
done
python benchmarks/speed.py --breakdown_only --accelerator "$ACCELERATOR" --data_dir .whl/data \
    2> "$OUT/speed.log" | tail -1 | tee "$OUT/speed.json"
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
report = {"device": (out / "device.txt").read_text().strip(), "runs": {}}
for line in (out / "walls.txt").read_text().splitlines():
    config, precision, accelerator, wall, code = line.split()
    found = list((out / "runs" / f"{config}-{precision}-{accelerator}").glob(
        "lightning_logs/version_*/results.json"))
    results = json.loads(found[0].read_text()) if found else {}
    report["runs"][f"{config} {precision} {accelerator}"] = {
        "wall_seconds": float(wall), "exit_code": int(code), **results}
try:
    report["speed"] = json.loads((out / "speed.json").read_text())
except ValueError:
    report["speed"] = None  # see speed.log
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
PY
rm -rf "$runs"  # only files two folders down come back; the numbers are in gpu_check.json
exit "$tests"
