#!/usr/bin/env bash
# On a machine with a CUDA GPU whose python3 has torch 2.11.0: runs the CUDA checks and the GPU
# table of the step bench from the binaries scripts/build-gpu-bin.sh made (default ./gpu-bin).
set -euo pipefail
bin=${1:-gpu-bin}
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
status=0
"$bin/engine_cuda" || status=$?
# The bench's PyTorch side is the copy of benches/py next to the binaries.
MOCO_BENCH_ROOT="$bin" MOCO_BENCH_PYTHON=python3 MOCO_BENCH_GPU_ONLY=1 "$bin/step" || status=$?
exit $status
