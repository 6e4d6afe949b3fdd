"""Batch clusters for `--cluster slurm|pbs`: job scripts checked as text (no batch system
is needed), and one run whose jobs go through stand-in sbatch/scancel commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import dask
import pytest
from helpers import TINY, assert_matches_reference

from virnuc_dask.cli.main import main
from virnuc_dask.cluster.start import (
    JOBQUEUE_DEFAULTS,
    WORKER_ENV_EXPORT,
    job_script,
    jobqueue_cluster,
    jobqueue_options,
    open_client,
    per_gpu_worker,
)
from virnuc_dask.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def worker_command(script: str) -> list[str]:
    (line,) = [x for x in script.splitlines() if "-m dask_cuda.cli" in x]
    return shlex.split(line)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_default_slurm_job_requests_gpus_and_sizes_each_gpu_worker():
    script = job_script("slurm")
    lines = script.splitlines()
    assert "#SBATCH --gres=gpu:4" in lines
    assert "#SBATCH --cpus-per-task=32" in lines
    assert "#SBATCH --mem=256G" in lines
    command = worker_command(script)
    # `dask cuda worker`, one worker per GPU; jobqueue's per-process shares are per GPU.
    assert command[1:3] == ["-m", "dask_cuda.cli"]
    assert option(command, "--nthreads") == "8"
    assert option(command, "--memory-limit") == "64.00GiB"
    assert option(command, "--resources") == "GPU=1"
    assert "--nworkers" not in command and "--nanny" not in command
    assert lines.index(WORKER_ENV_EXPORT) < lines.index(next(x for x in lines if "dask_cuda" in x))


def test_default_pbs_job_requests_gpus_and_sizes_each_gpu_worker():
    script = job_script("pbs")
    assert "#PBS -l select=1:ncpus=32:ngpus=4:mem=256GB" in script.splitlines()
    command = worker_command(script)
    assert option(command, "--nthreads") == "8"
    assert option(command, "--memory-limit") == "64.00GiB"
    assert option(command, "--resources") == "GPU=1"
    assert WORKER_ENV_EXPORT in script.splitlines()


def test_nanny_environment_line_unsets_malloc_trim_in_a_shell(tmp_path):
    probe = ("import dask, distributed; from distributed.nanny import _get_env_variables; "
             "print(sorted(_get_env_variables('distributed.nanny.pre-spawn-environ')))")
    out = subprocess.run(
        ["bash", "-c", f"{WORKER_ENV_EXPORT}\nunset MALLOC_TRIM_THRESHOLD_\n"
                       f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}"],
        capture_output=True, text=True, check=True).stdout
    assert "MALLOC_TRIM_THRESHOLD_" not in out
    assert "OMP_NUM_THREADS" in out  # the rest of Dask's defaults stays


def site_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_cluster_config_file_overrides_defaults(tmp_path):
    config = site_config(tmp_path, """
jobqueue:
  slurm:
    queue: gpu
    account: proj
    processes: 2
    cores: 16
    memory: 64GiB
    interface: ib0
    job-script-prologue: ["module load cuda"]
""")
    script = job_script("slurm", config_file=config)
    lines = script.splitlines()
    assert {"#SBATCH -p gpu", "#SBATCH -A proj", "#SBATCH --gres=gpu:2",
            "#SBATCH --cpus-per-task=16", "#SBATCH --mem=64G"} <= set(lines)
    assert lines.index("module load cuda") < lines.index(WORKER_ENV_EXPORT)
    command = worker_command(script)
    assert option(command, "--nthreads") == "8"
    assert option(command, "--memory-limit") == "32.00GiB"
    assert option(command, "--interface") == "ib0"
    assert per_gpu_worker(jobqueue_options("slurm", config_file=config)) == {
        "threads": 8, "memory_limit": "32.00 GiB"}


def test_dask_config_beats_packaged_defaults_and_file_beats_both(tmp_path):
    with dask.config.set({"jobqueue.slurm.queue": "from-dask-config"}):
        assert "#SBATCH -p from-dask-config" in job_script("slurm").splitlines()
        config = site_config(tmp_path, "jobqueue:\n  slurm:\n    queue: from-file\n")
        assert "#SBATCH -p from-file" in job_script("slurm", config_file=config).splitlines()


def test_explicit_gpu_requests_are_kept(tmp_path):
    config = site_config(tmp_path, """
jobqueue:
  slurm:
    job-extra-directives: ["--gpus-per-node=a100:4"]
  pbs:
    resource-spec: select=1:ncpus=32:ngpus=4:gpu_type=a100:mem=256gb
""")
    slurm = job_script("slurm", config_file=config).splitlines()
    assert "#SBATCH --gpus-per-node=a100:4" in slurm
    assert not [x for x in slurm if x.startswith("#SBATCH --gres")]
    pbs = job_script("pbs", config_file=config).splitlines()
    assert "#PBS -l select=1:ncpus=32:ngpus=4:gpu_type=a100:mem=256gb" in pbs


def test_deprecated_jobqueue_keys_are_kept(tmp_path):
    config = site_config(tmp_path, """
jobqueue:
  slurm:
    env-extra: ["source /opt/env.sh"]
    job-extra: ["--qos=high"]
""")
    lines = job_script("slurm", config_file=config).splitlines()
    assert lines.index("source /opt/env.sh") < lines.index(WORKER_ENV_EXPORT)
    assert {"#SBATCH --qos=high", "#SBATCH --gres=gpu:4"} <= set(lines)


@pytest.mark.parametrize("text, message", [
    ("jobqueue:\n  slurm:\n    quene: gpu\n",
     r"unknown jobqueue.slurm key\(s\) quene; allowed: .*queue"),
    ("slurm:\n  queue: gpu\n", "expected dask-jobqueue's layout"),
    ("jobqueue:\n  sge:\n    queue: q\n", "jobqueue must hold sections slurm and/or pbs"),
    ("jobqueue:\n  slurm:\n    processes: 0\n", "processes must be the number of GPUs per job"),
    ("jobqueue: [1\n", "not valid YAML"),
])
def test_bad_cluster_config(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        job_script("slurm", config_file=site_config(tmp_path, text))


def test_real_cluster_object_builds_the_same_jobs(tmp_path):
    config = site_config(tmp_path, "jobqueue:\n  slurm:\n    scheduler-options: "
                                   "{dashboard_address: ':0'}\n")
    with jobqueue_cluster("slurm", config_file=config) as cluster:
        script = cluster.job_script()
        # dask-cuda names its workers <job>-0 .. <job>-3: the groups jobqueue expects.
        assert cluster.new_spec["group"] == ["-0", "-1", "-2", "-3"]
        assert cluster.scheduler_address in script
    expected = job_script("slurm", config_file=config).splitlines()
    got = script.splitlines()
    assert [x for x in got if x.startswith("#SBATCH")] == \
        [x for x in expected if x.startswith("#SBATCH")]
    assert re.sub(r"tcp://\S+ --name \S+", "", got[-1]) == \
        re.sub(r"tcp://\S+ --name \S+", "", expected[-1])


def test_submitting_without_slurm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    config = site_config(tmp_path, "jobqueue:\n  slurm:\n    scheduler-options: "
                                   "{dashboard_address: ':0'}\n")
    settings = load_settings(overrides={"cluster": "slurm", "jobs": 2,
                                        "cluster_config": str(config)})
    with pytest.raises(ConfigError, match="sbatch not found.*login node"), \
            open_client(settings):
        pass


def test_job_script_command_prints_the_script(tmp_path, capsys):
    config = site_config(tmp_path, "jobqueue:\n  pbs:\n    queue: gpuq\n")
    assert main(["job-script", "pbs", "--cluster-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "#PBS -q gpuq" in out.splitlines()
    assert "-m dask_cuda.cli" in out


def test_packaged_defaults_and_examples_are_documented():
    text = JOBQUEUE_DEFAULTS.read_text()
    assert "applies both to EACH per-GPU" in text
    assert (ROOT / "cluster" / "jobqueue.yaml").resolve() == JOBQUEUE_DEFAULTS.resolve()
    # The site example is a valid --cluster-config for both systems.
    for system in ("slurm", "pbs"):
        assert "dask_cuda.cli" in job_script(system, config_file=ROOT / "cluster" / "site.yaml")


def test_slurm_batch_script_runs_ranks_of_one_srun():
    path = ROOT / "cluster" / "slurm-batch.sh"
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    directives = [x for x in text.splitlines() if x.startswith("#SBATCH")]
    assert any(x.startswith("#SBATCH --gres=gpu:") for x in directives)
    (srun,) = [x for x in text.split("\n\n") if x.startswith("srun ")]
    words = shlex.split(srun.replace("\\\n", " "), comments=True)
    assert "--ntasks=$((SLURM_JOB_NUM_NODES" in words[1]
    assert "--distribution=cyclic" in words
    assert words[words.index("virnuc-dask"):][:2] == ["virnuc-dask", "predict"]
    assert option(words, "--cluster") == "slurm-runner"
    assert "--offline" in words and "--model-cache" in words


STAND_IN_SBATCH = """#!/usr/bin/env bash
# Stand-in for SLURM's sbatch on a machine without SLURM: run the job script here,
# in its own process group, and answer like sbatch.
set -e
script="$(dirname "$0")/job-$$.sh"
cp "$1" "$script"
setsid bash "$script" > "$script.log" 2>&1 < /dev/null &
echo "Submitted batch job $!"
"""
STAND_IN_SCANCEL = """#!/usr/bin/env bash
kill -TERM -- "-$1" 2>/dev/null || true
"""


def test_predict_on_batch_jobs_matches_original(reference, tmp_path):
    """`--cluster slurm` end to end: jobqueue writes and submits the job, a worker starts.

    sbatch/scancel are stand-ins that run the job script on this machine; the worker
    command is plain `dask worker` (no GPU here), everything else is the real path.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", STAND_IN_SBATCH), ("scancel", STAND_IN_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    config = site_config(tmp_path, """
jobqueue:
  slurm:
    processes: 1
    cores: 2
    memory: 2GiB
    worker-command: distributed.cli.dask_worker
    death-timeout: 30
    scheduler-options: {dashboard_address: ":0"}
""")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "virnuc_dask", "predict",
         str(reference / "dev" / "mixed" / "input.fa"), "--length", "300",
         "--esm-model", TINY["esm_model"], "--dnabert-model", TINY["dnabert_model"],
         "--classifier", TINY["classifier"], "--precision", "fp32", "--out", "out",
         "--cluster", "slurm", "--jobs", "1", "--cluster-config", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 job(s) of 1 GPU worker(s) submitted" in proc.stderr
    assert_matches_reference(tmp_path / "out", reference / "dev" / "mixed" / "L300")
    (log,) = bin_dir.glob("job-*.sh.log")
    assert "Starting Worker plugin virnuc-dask-models" in log.read_text()
