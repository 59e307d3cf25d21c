#!/usr/bin/env bash
# The time-boxed ResNet-101 study (resnet101_h200.yaml) on a lent NVIDIA H200, run from source (no pip install):
#   bash experiments/studies/resnet101_h200.sh DATA_ZIP OUT_DIR [smoke]
# Needs on that machine: python3 with torch, lightning, torchmetrics, tensorboard, onnx, onnxruntime, matplotlib, rich;
# the wheels in .whl/ (jsonargparse 4.53.0, docstring_parser, typeshed_client) are installed into /tmp/site first.
# "smoke" first runs the study at toy size on a synthetic image-folder zip (experiments/studies/smoke_variant.py)
# and the CUDA tests (pytest -m cuda), so that a broken stage shows up in a minute, not after the whole run.
# OUT_DIR gets: the study's log, nvidia-smi, versions, and study.tar.gz (manifests, report, figures, TensorBoard
# events; no checkpoints).
set -uo pipefail
data=$1 out=$2 mode=${3:-full}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NM_DISABLE_ANALYTICS=1 LIT_KD_CACHE=/tmp/lit-kd-cache
study() { python3 -c "import sys; from lit_kd.cli import main; sys.exit(main())" study "$@"; }
{ nvidia-smi; python3 -c "import torch, lightning, numpy, onnx, onnxruntime, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('lightning', lightning.__version__, 'numpy', numpy.__version__, 'onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__)"; nproc; } > "$out/machine.txt" 2>&1
if [ "$mode" = smoke ]; then
  python3 -c "from pathlib import Path; from tests.conftest import write_image_folder_zip; write_image_folder_zip(Path('/tmp/tiny.zip'), {'train': 30, 'test': 10})" || exit 1
  timeout 300 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_device_placement.py -o addopts="" 2>&1 | tail -15 | tee "$out/cuda_tests.log"
  smoke=$(python3 experiments/studies/smoke_variant.py experiments/studies/resnet101_h200.yaml) || exit 1
  timeout 400 bash -c "$(declare -f study); study $smoke --out /tmp/smoke --data /tmp/tiny.zip" > "$out/smoke.log" 2>&1
  status=$?
  tail -40 "$out/smoke.log"
  tar czf "$out/smoke.tar.gz" --exclude='*.ckpt' --exclude='*.pt' --exclude='*.onnx' -C /tmp smoke 2>/dev/null
  exit $status
fi
start=$(date +%s)
timeout 450 bash -c "$(declare -f study); study experiments/studies/resnet101_h200.yaml --out /tmp/resnet101_h200 --data $data" 2>&1 | tee "$out/study.log" | grep -v "^\s*$" | grep -E "^\[|study|report|error|Error|epoch" | tail -60
status=${PIPESTATUS[0]}
echo "study exit status $status after $(( $(date +%s) - start )) s" | tee -a "$out/study.log"
# the training loop's speed outside the study: plain PyTorch loop vs Lightning, same batches, bf16, channels-last
timeout 75 python3 -m benchmarks.train_throughput --data "$data" --model resnet101 --batch-size 512 --warmup 5 --steps 20 \
  --repeats 2 --precision bf16-mixed --only-channels-last --threads "$(nproc)" --out "$out/train_throughput_h200.json" 2>&1 | tail -3
tar czf "$out/study.tar.gz" --exclude='*.ckpt' --exclude='*.pt' --exclude='*.onnx' -C /tmp resnet101_h200
ls -la "$out"
exit $status
