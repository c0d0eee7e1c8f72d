#!/usr/bin/env bash
# The GPU check as one command on a bare GPU machine (nothing can be fetched there):
#
#   benchmarks/gpu_check.sh OUT_DIR [--quick] [--budget SECONDS]
#
# Without a GPU it prints one line and exits 0, writing nothing. Packages sedeploy needs that the machine
# lacks travel as wheels in benchmarks/wheels/ (Python 3.12, manylinux x86_64, at most 64 MiB in all), made
# beforehand on a machine with the registry, e.g.:
#   pip download --no-deps --python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64 \
#       -d benchmarks/wheels onnx ml_dtypes protobuf tqdm pytest pluggy iniconfig
# They are installed into a temporary folder (never into the machine's Python) and put on PYTHONPATH.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--quick] [--budget SECONDS]}"
shift
python="${PYTHON:-python3}"
if ! "$python" "$here/gpu_check.py" --probe; then
  exit 0
fi
if ls "$here"/wheels/*.whl >/dev/null 2>&1; then
  site="$(mktemp -d "${TMPDIR:-/tmp}/sedeploy-wheels.XXXXXX")"
  "$python" -m pip install --quiet --no-index --no-deps --target "$site" "$here"/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 590 "$python" "$here/gpu_check.py" --out "$out" "$@"
