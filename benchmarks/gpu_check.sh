#!/usr/bin/env bash
# The GPU check, the one command to run on a GPU machine (nothing can be fetched there):
#
#   benchmarks/gpu_check.sh OUT_DIR [--only SECTION,...] [--memcheck] [--dry-run]
#
# Writes OUT_DIR/gpu_check.md (the verdict table first), gpu_check.json and gpu_check.log, rewritten after
# every section, so a run stopped by its time limit keeps what finished. Exit 1 when any check FAILs.
# The sections get GPU_CHECK_BUDGET seconds (240); the whole run is stopped at GPU_CHECK_TIMEOUT (300) by
# SIGTERM (the report is written once more) and SIGKILL 15 s later: a run and a rerun fit in 15 minutes of
# machine time with its start. Rerun only what failed with --only, e.g. --only torch_parity,digits.
#
# Packages sedeploy needs that the machine lacks travel as wheels in benchmarks/wheels/ (Python 3.12,
# manylinux x86_64, at most 64 MiB in all), made beforehand on a machine with the registry, e.g.:
#   pip download --no-deps --python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64 \
#       -d benchmarks/wheels onnx ml_dtypes protobuf tqdm
# They are installed into a temporary folder (never into the machine's Python) and put on PYTHONPATH.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--only SECTION,...] [--memcheck] [--dry-run]}"
shift
python="${PYTHON:-python3}"
mkdir -p "$out"
if ls "$here"/wheels/*.whl >/dev/null 2>&1; then
  site="$(mktemp -d "${TMPDIR:-/tmp}/sedeploy-wheels.XXXXXX")"
  "$python" -m pip install --quiet --no-index --no-deps --target "$site" "$here"/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
timeout -k 15 "${GPU_CHECK_TIMEOUT:-300}" "$python" "$here/gpu_check.py" --out "$out" \
  --budget "${GPU_CHECK_BUDGET:-240}" "$@"
status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "gpu_check: stopped by its ${GPU_CHECK_TIMEOUT:-300} s limit; $out holds every section that finished" >&2
  status=1
fi
exit "$status"
