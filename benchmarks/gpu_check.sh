#!/usr/bin/env bash
# The GPU check: on a machine with CUDA, the torch and Keras-on-torch tests on CUDA, then
# bench_torch on CUDA (every executor and compiled path against torch's Adam; first-step compile
# times; each step's transient memory). About 6-8 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh            # from the project root, with torch (CUDA), jax, optax
#
# Keras is not needed for the torch checks; where it is missing and a folder .whl/ holds its
# wheels (keras, namex, optree for the machine's Python), they are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX traces on the CPU: left to itself, JAX would take most of the GPU's memory from torch.
export JAX_PLATFORMS=cpu OMP_WAIT_POLICY=PASSIVE
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name())' || exit 2
if ! python3 -c 'import keras' 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
status=0
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_torch_cuda.py || status=1
timeout 360 python3 -m benchmarks.bench_torch --device cuda --rounds 50 || status=1
exit $status
