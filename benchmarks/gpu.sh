#!/usr/bin/env bash
# One command for a GPU node: images/s of the DALI training pipeline (mixed JPEG decode, every
# image operator on the GPU) for no augmentation, DALI's rand_augment(n=2, m=9), the compiled
# ra-n2-m9 and the compiled paper policy (dra-imagenet-resnet-50), alone and feeding a
# ResNet-50 training step (AMP bf16, channels-last), side by side in interleaved rounds.
#
#   bash benchmarks/gpu.sh                       # defaults below
#   BATCH=256 THREADS=16 MODEL=resnet50 ROUNDS=5 bash benchmarks/gpu.sh --nearest --json gpu.json
#
# Needs a CUDA GPU, DALI for CUDA and torchvision (for resnet50); extra arguments go to
# benchmarks/dali_throughput.py (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/dali_throughput.py --device gpu \
    --batch-size "${BATCH:-128}" --threads "${THREADS:-8}" --rounds "${ROUNDS:-3}" \
    --batches "${BATCHES:-20}" --jpegs "${JPEGS:-256}" --train-model "${MODEL:-resnet50}" \
    --skip-pil --skip-ops "$@"
