#!/usr/bin/env bash
# Gather what benchmarks/gpu_check.sh needs on a GPU machine without network, into .whl/
# (ignored by git): the wheels of jsonargparse and pytest with their dependencies, for
# Python 3.12 on x86-64 Linux, and the four raw MNIST files, verified here.
#
#     bash benchmarks/gpu_bundle.sh      # here, where the package index is reachable
#     bash benchmarks/gpu_check.sh       # there, with .whl/ copied beside the code
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip download --quiet --dest .whl --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    "jsonargparse[signatures]>=4.53.0" "pytest>=8.0"
PYTHONPATH="$PWD/src" python -c \
    "from mnist_linear.mnist_files import ensure_mnist; ensure_mnist('.whl/data')"
rm -f .whl/data/MNIST/raw/.verified.json  # another machine hashes the files itself
du -sh .whl
