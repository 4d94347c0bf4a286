#!/bin/bash
# nst-batch over a Slurm job array: 4 tasks, one GPU each, each running one shard of the
# manifest. nst-batch reads its shard from SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) and
# SLURM_ARRAY_TASK_COUNT, so the same script works for --array=0-3 or 1-4.
#
#   sbatch deploy/slurm-array.sh /shared/project/manifest.csv
#
# The manifest's folder must be on a file system every node sees; outputs and the reports
# (MANIFEST.report.shard-I-of-4.json/.csv) are written there. Resubmitting skips the jobs already done.
#SBATCH --job-name=nst-batch
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=nst-batch-%A_%a.log
set -euo pipefail

MANIFEST=$(realpath "${1:-manifest.csv}")
DATA=$(dirname "$MANIFEST")
IMAGE=${NST_BATCH_IMAGE:-nst-batch.sif}  # apptainer build nst-batch.sif docker-daemon://nst-batch:latest

# Slurm sends SIGTERM before killing a task at its time limit: nst-batch then writes its report
# and exits 130, and the next submission carries on where it stopped.
if command -v apptainer >/dev/null || command -v singularity >/dev/null; then
    RUNNER=$(command -v apptainer || command -v singularity)
    exec "$RUNNER" run --nv --bind "$DATA:/data" "$IMAGE" \
        run "/data/$(basename "$MANIFEST")" --device cuda
else
    # As the submitting user, so the outputs beside the manifest are theirs.
    exec docker run --rm --gpus "device=${CUDA_VISIBLE_DEVICES:-0}" --user "$(id -u):$(id -g)" \
        -e SLURM_ARRAY_TASK_ID -e SLURM_ARRAY_TASK_MIN -e SLURM_ARRAY_TASK_COUNT \
        -e SLURM_ARRAY_TASK_STEP -v "$DATA:/data" nst-batch:latest \
        run "/data/$(basename "$MANIFEST")" --device cuda
fi
