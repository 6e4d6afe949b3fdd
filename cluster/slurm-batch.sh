#!/usr/bin/env bash
# virnuc-dask as one SLURM batch job: scheduler, client and workers are ranks of one srun.
#
#   sbatch cluster/slurm-batch.sh            (edit the settings below first)
#
# Every rank runs the same `virnuc-dask predict ... --cluster slurm-runner` command.
# dask-jobqueue's SLURMRunner gives each rank its role from SLURM_PROCID:
#   rank 0      the Dask scheduler (writes OUT/.scheduler-<job id>.json),
#   rank 1      the client: runs the prediction and writes the results,
#   ranks 2...  workers: a dask-cuda CUDAWorker per node, which starts one worker
#               per GPU of its node, each offering the resource GPU=1.
# When the client is done it stops the scheduler and the workers; the job ends.
#
# Layout: NODES nodes run NODES + 2 tasks, placed cyclically (rank k on node k mod
# NODES), so every node runs exactly one worker rank and nodes 0 and 1 also run the
# scheduler and the client, which need no GPU and little CPU. (On one node, all
# three ranks share it.)
#
# Nodes cannot download? Stage the models once where they can:
#   virnuc-dask models fetch --to /shared/virnuc-models
# and keep --model-cache/--offline below. The dashboard is printed in the log by
# the client rank ("dashboard: http://NODE:8787/status"); reach it with
#   ssh -L 8787:NODE:8787 LOGIN-NODE
#
#SBATCH --job-name=virnuc-dask
#SBATCH --nodes=2
#SBATCH --ntasks=4                  # = nodes + 2 (scheduler and client ranks)
#SBATCH --gres=gpu:4                # GPUs per node
#SBATCH --cpus-per-task=16          # per rank; the worker rank shares them among its GPUs
#SBATCH --mem=0                     # all of each node's memory
#SBATCH --time=04:00:00
#SBATCH --output=virnuc-dask-%j.log

set -euo pipefail

GPUS_PER_NODE=4                     # as --gres above
INPUT=reads.fa                      # FASTA file(s), plain or gzip
LENGTH=500                          # 300 or 500, matching the classifier
CLASSIFIER=500_model.pth            # VirNucPro's 300_model.pth / 500_model.pth
MODELS=/shared/virnuc-models        # from `virnuc-dask models fetch --to ...`
OUT=results                         # on a file system every node sees

# Load the software environment on every node, e.g.:
# module load cuda
# source /shared/venvs/virnuc-dask/bin/activate

srun --ntasks=$((SLURM_JOB_NUM_NODES + 2)) --distribution=cyclic \
     --gres=gpu:"$GPUS_PER_NODE" --cpus-per-task="$SLURM_CPUS_PER_TASK" \
    virnuc-dask predict "$INPUT" --length "$LENGTH" --classifier "$CLASSIFIER" \
        --model-cache "$MODELS" --offline --out "$OUT" \
        --cluster slurm-runner --performance-report "$OUT/performance-report.html"
