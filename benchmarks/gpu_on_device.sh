#!/usr/bin/env bash
# The GPU figures in one run, for a lent GPU machine (the session's `device` tool), where PyTorch is installed
# but onnxruntime-gpu is not and nothing can be downloaded: detector throughput by batch size and precision,
# the shipped ONNX graphs run by PyTorch (benchmarks/bench_detector_torch.py, which says how the figures map
# to a GPU box with onnxruntime-gpu).
#
# Here, once (onnx2torch travels as a wheel; /.whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl onnx2torch==1.5.15
# Then, with the device tool: run(command="bash benchmarks/gpu_on_device.sh", carry=[".whl"], timeout_s=480)
# and copy $OUT/detector-torch-<gpu>.json into benchmarks/results/. About 3–4 minutes on an H200.
#
# DEVICE=cpu PYTHON=… runs the same steps on a CPU (FP32 only), which is how the script itself is checked.
# What it cannot measure: hardware decoding (NVDEC). PyAV's wheel has FFmpeg's cuda hwaccel, but it is 36 MB
# and the repo already is ~63 MB of the 64 MiB a call may carry (the models are most of it).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-var/bench/gpu}
mkdir -p "$OUT"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/pingan-site .whl/onnx2torch-*.whl
export PYTHONPATH=/tmp/pingan-site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
gpu=cpu
if [ "$DEVICE" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/nvidia-smi.txt"
  gpu=$(head -1 "$OUT/nvidia-smi.txt" | cut -d, -f1 | tr -c 'A-Za-z0-9\n' '-' | tr 'A-Z' 'a-z')
fi
"$PYTHON" -m benchmarks.bench_detector_torch --device "$DEVICE" --batches "${BATCHES:-1,2,4,8,16,32,64}" \
  --precisions fp32,fp16 --seconds "${SECONDS_PER_ROW:-2}" --out "$OUT/detector-torch-$gpu.json" 2>&1 \
  | tee "$OUT/detector-torch-$gpu.log"
