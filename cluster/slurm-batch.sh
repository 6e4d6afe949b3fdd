#!/usr/bin/env bash
# virnuc-dask as one SLURM batch job: scheduler, client and workers are ranks of one srun.
#
#   sbatch cluster/slurm-batch.sh            (edit the settings block below; nothing else)
#
# Every rank runs the same `virnuc-dask predict ... --cluster slurm-runner` command.
# dask-jobqueue's SLURMRunner gives each rank its role from SLURM_PROCID:
#   rank 0      the Dask scheduler (writes OUT/.scheduler-<job id>.json),
#   rank 1      the client: runs the prediction and writes the results,
#   ranks 2...  workers: on nodes with GPUs a dask-cuda CUDAWorker per node, which starts
#               one worker per GPU of its node, each offering the resource GPU=1; on
#               nodes without (--gres=gpu:0) one CPU worker per node.
# When the client is done it stops the scheduler and the workers; the job ends.
#
# Layout: NODES nodes run NODES + 2 tasks, placed cyclically (rank k on node k mod
# NODES), so every node runs exactly one worker rank and nodes 0 and 1 also run the
# scheduler and the client, which need no GPU and little CPU. (On one node, all
# three ranks share it.)
#
# Ending early: scancel, the time limit or preemption stop every rank within seconds
# (exit 143); finished partitions are kept in OUT, and submitting the same script
# again resumes the run.
#
# Nodes cannot download? Stage the models once where they can:
#   virnuc-dask models fetch --to /shared/virnuc-models
# and set MODEL_CACHE and OFFLINE below. The dashboard listens on localhost of the
# scheduler's node; the client rank logs that node and the tunnel that reaches it
# ("dashboard: http://localhost:8787/status on NODE ... ssh -L 8787:localhost:8787 NODE").
# The ranks speak TLS with credentials made for the job (OUT/.tls-<job>..., mode 0700).
#
# ---- settings ----------------------------------------------------------------------------
# sbatch reads these lines before the script runs: plain values, no shell variables.
#SBATCH --job-name=virnuc-dask
#SBATCH --nodes=2                   # nodes; each runs one worker rank
#SBATCH --ntasks=4                  # = nodes + 2 (the scheduler and the client ranks)
#SBATCH --gres=gpu:4                # GPUs per node; --gres=gpu:0 for CPU workers
#SBATCH --cpus-per-task=16          # per rank; a GPU worker rank shares them among its GPUs
#SBATCH --mem=0                     # all of each node's memory
#SBATCH --time=04:00:00
#SBATCH --output=virnuc-dask-%j.log
# Fewer CPUs per node than its tasks need (e.g. 3 tasks on a 2-CPU node)? Add:
#   #SBATCH --overcommit

INPUT=reads.fa                      # FASTA file(s), plain or gzip (several: "a.fa b.fa")
OUT=results                         # on a file system every node sees
LENGTH=500                          # 300 or 500, matching the classifier
CLASSIFIER=500_model.pth            # VirNucPro's 300_model.pth / 500_model.pth
ESM_MODEL=esm2_t36_3B_UR50D         # fair-esm hub name, or a local .pt file
DNABERT_MODEL=zhihan1996/DNABERT-S  # Hugging Face hub id, or a local directory
MODEL_CACHE=/shared/virnuc-models   # from `virnuc-dask models fetch --to ...`; empty: none
OFFLINE=yes                         # yes: the nodes never download (models staged before)

setup_environment() {               # the software environment, for every rank
    # module load cuda
    source /shared/venvs/virnuc-dask/bin/activate
}
# ---- end of settings ---------------------------------------------------------------------

setup_environment
set -euo pipefail

# GPU workers where SLURM allocated GPUs (--gres above), CPU workers where it did not.
if [ "${SLURM_GPUS_ON_NODE:-0}" -gt 0 ]; then worker_type=gpu; else worker_type=cpu; fi
models=(--esm-model "$ESM_MODEL" --dnabert-model "$DNABERT_MODEL")
if [ -n "$MODEL_CACHE" ]; then models+=(--model-cache "$MODEL_CACHE"); fi
if [ "$OFFLINE" = yes ]; then models+=(--offline); fi
read -r -a inputs <<< "$INPUT"
echo "virnuc-dask: job $SLURM_JOB_ID, $SLURM_JOB_NUM_NODES node(s), $worker_type workers"

# A rank that fails (a worker without its GPU, a model that cannot load) ends the step.
srun --ntasks=$((SLURM_JOB_NUM_NODES + 2)) --distribution=cyclic --kill-on-bad-exit=1 \
     --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
    virnuc-dask predict "${inputs[@]}" --length "$LENGTH" --classifier "$CLASSIFIER" \
        "${models[@]}" --out "$OUT" --cluster slurm-runner --worker-type "$worker_type" \
        --performance-report "$OUT/performance-report.html"
