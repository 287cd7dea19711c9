#!/usr/bin/env bash
# Run attrbench on a machine whose Python has PyTorch (CUDA) but not attrbench's other dependencies, such as
# this project's lent GPU machines: wheels carried in .whl/ (see README, "GPU runs") are installed into
# /tmp/site, attrbench is imported from this checkout through a tree of symlinks (the installed names), and
# the arguments are passed to `attrbench`. Example:
#   bash scripts/device-run.sh run --model qwen3-4b --nodes 10000 --device cuda --dtype bfloat16 -o out.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -d .whl ] && ! [ -f /tmp/site/.attrbench-wheels ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  touch /tmp/site/.attrbench-wheels
fi
rm -rf /tmp/attrbench-src && mkdir -p /tmp/attrbench-src/attrbench
for entry in "$PWD"/harness/*; do ln -s "$entry" "/tmp/attrbench-src/attrbench/$(basename "$entry")"; done
ln -s "$PWD/backends" /tmp/attrbench-src/attrbench/backends
ln -s "$PWD/plugins" /tmp/attrbench-src/attrbench/plugins
export PYTHONPATH="/tmp/attrbench-src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" -m attrbench.cli "$@"
