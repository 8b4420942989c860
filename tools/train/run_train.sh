#!/bin/sh
# Run train.py with OpenBLAS (Debian's python3-torch links the slow reference libblas; the
# OpenBLAS .so files unpacked by prepare_corpus.py into data/openblas are ~12x faster here).
# Usage: tools/train/run_train.sh --minutes 75   (logs to stdout; redirect it)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$HERE/data/openblas/usr/lib/x86_64-linux-gnu/openblas-pthread"
export OPENBLAS_NUM_THREADS=2
export OMP_NUM_THREADS=2
cd "$HERE"
exec /usr/bin/python3 -u train.py "$@"
