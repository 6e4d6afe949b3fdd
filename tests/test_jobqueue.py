"""Batch clusters for `--cluster slurm|pbs`: job scripts checked as text (no batch system
is needed). Runs on a real SLURM: test_slurm.py."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import dask
import pytest

from virnuc_dask.cli.main import main
from virnuc_dask.cluster.jobqueue import (
    JOBQUEUE_DEFAULTS,
    job_script,
    jobqueue_cluster,
    jobqueue_options,
    per_gpu_worker,
)
from virnuc_dask.cluster.start import open_client
from virnuc_dask.cluster.workers import WORKER_ENV_EXPORT
from virnuc_dask.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def worker_command(script: str, module: str = "dask_cuda.cli") -> list[str]:
    (line,) = [x for x in script.splitlines() if f"-m {module}" in x]
    return shlex.split(line)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_default_slurm_job_requests_gpus_and_sizes_each_gpu_worker():
    script = job_script("slurm")
    lines = script.splitlines()
    assert "#SBATCH --gres=gpu:1" in lines
    assert "#SBATCH --cpus-per-task=8" in lines
    assert "#SBATCH --mem=32G" in lines
    command = worker_command(script)
    assert command[1:3] == ["-m", "dask_cuda.cli"]
    assert option(command, "--nthreads") == "8"
    assert option(command, "--memory-limit") == "32.00GiB"
    # 4 GPUs per job: `dask cuda worker` starts one worker per GPU, each with its share.
    command = worker_command(job_script("slurm", processes=4, cores=32, memory="256GiB"))
    assert option(command, "--nthreads") == "8"
    assert option(command, "--memory-limit") == "64.00GiB"
    assert option(command, "--resources") == "GPU=1"
    assert "--nworkers" not in command and "--nanny" not in command
    assert lines.index(WORKER_ENV_EXPORT) < lines.index(next(x for x in lines if "dask_cuda" in x))


def test_default_pbs_job_requests_gpus_and_sizes_each_gpu_worker():
    script = job_script("pbs", processes=4, cores=32, memory="256GiB")
    assert "#PBS -l select=1:ncpus=32:ngpus=4:mem=256GB" in script.splitlines()
    command = worker_command(script)
    assert option(command, "--nthreads") == "8"
    assert option(command, "--memory-limit") == "64.00GiB"
    assert option(command, "--resources") == "GPU=1"
    assert WORKER_ENV_EXPORT in script.splitlines()


def test_nanny_environment_line_unsets_malloc_trim_in_a_shell(tmp_path):
    probe = (
        "import dask, distributed; from distributed.nanny import _get_env_variables; "
        "print(sorted(_get_env_variables('distributed.nanny.pre-spawn-environ')))"
    )
    out = subprocess.run(
        [
            "bash",
            "-c",
            f"{WORKER_ENV_EXPORT}\nunset MALLOC_TRIM_THRESHOLD_\n"
            f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "MALLOC_TRIM_THRESHOLD_" not in out
    assert "OMP_NUM_THREADS" in out  # the rest of Dask's defaults stays


def site_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_cluster_config_file_overrides_defaults(tmp_path):
    config = site_config(
        tmp_path,
        """
jobqueue:
  slurm:
    queue: gpu
    account: proj
    processes: 2
    cores: 16
    memory: 64GiB
    interface: ib0
    job-script-prologue: ["module load cuda"]
""",
    )
    script = job_script("slurm", config_file=config)
    lines = script.splitlines()
    assert {
        "#SBATCH -p gpu",
        "#SBATCH -A proj",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=64G",
    } <= set(lines)
    assert lines.index("module load cuda") < lines.index(WORKER_ENV_EXPORT)
    command = worker_command(script)
    assert option(command, "--nthreads") == "8"
    assert option(command, "--memory-limit") == "32.00GiB"
    assert option(command, "--interface") == "ib0"
    assert per_gpu_worker(jobqueue_options("slurm", config_file=config)) == {
        "threads": 8,
        "memory_limit": "32.00 GiB",
    }


def test_dask_config_beats_packaged_defaults_and_file_beats_both(tmp_path):
    with dask.config.set({"jobqueue.slurm.queue": "from-dask-config"}):
        assert "#SBATCH -p from-dask-config" in job_script("slurm").splitlines()
        config = site_config(tmp_path, "jobqueue:\n  slurm:\n    queue: from-file\n")
        assert "#SBATCH -p from-file" in job_script("slurm", config_file=config).splitlines()


def test_defaults_come_back_after_a_config_set_removed_them(monkeypatch):
    """A ``dask.config.set`` of a jobqueue key, entered before the defaults were first
    registered, removes the whole section when it ends (as a notebook may do)."""
    before = job_script("slurm")
    monkeypatch.delitem(dask.config.config, "jobqueue")
    with dask.config.set({"jobqueue.slurm.queue": "set-here"}):
        assert "#SBATCH -p set-here" in job_script("slurm").splitlines()
    assert job_script("slurm") == before
    assert "#SBATCH -J virnuc-dask" in before.splitlines()


def test_explicit_gpu_requests_are_kept(tmp_path):
    config = site_config(
        tmp_path,
        """
jobqueue:
  slurm:
    job-extra-directives: ["--gpus-per-node=a100:4"]
  pbs:
    resource-spec: select=1:ncpus=32:ngpus=4:gpu_type=a100:mem=256gb
""",
    )
    slurm = job_script("slurm", config_file=config).splitlines()
    assert "#SBATCH --gpus-per-node=a100:4" in slurm
    assert not [x for x in slurm if x.startswith("#SBATCH --gres")]
    pbs = job_script("pbs", config_file=config).splitlines()
    assert "#PBS -l select=1:ncpus=32:ngpus=4:gpu_type=a100:mem=256gb" in pbs


def test_deprecated_jobqueue_keys_are_kept(tmp_path):
    config = site_config(
        tmp_path,
        """
jobqueue:
  slurm:
    env-extra: ["source /opt/env.sh"]
    job-extra: ["--qos=high"]
""",
    )
    lines = job_script("slurm", config_file=config).splitlines()
    assert lines.index("source /opt/env.sh") < lines.index(WORKER_ENV_EXPORT)
    assert {"#SBATCH --qos=high", "#SBATCH --gres=gpu:1"} <= set(lines)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "jobqueue:\n  slurm:\n    quene: gpu\n",
            r"unknown jobqueue.slurm key\(s\) quene; allowed: .*queue",
        ),
        ("slurm:\n  queue: gpu\n", "expected dask-jobqueue's layout"),
        ("jobqueue:\n  sge:\n    queue: q\n", "jobqueue must hold sections slurm and/or pbs"),
        ("jobqueue:\n  slurm:\n    processes: 0\n", "processes must be the number of GPUs per job"),
        (
            "jobqueue:\n  slurm:\n    cores: 0\n",
            "cores must be the CPUs per job, at least processes",
        ),
        ("jobqueue:\n  slurm:\n    memory: lots\n", "memory must be the host memory per job"),
        ("jobqueue: [1\n", "not valid YAML"),
    ],
)
def test_bad_cluster_config(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        job_script("slurm", config_file=site_config(tmp_path, text))


def test_real_cluster_object_builds_the_same_jobs(tmp_path):
    config = site_config(
        tmp_path,
        "jobqueue:\n  slurm:\n    processes: 4\n    cores: 32\n"
        "    memory: 128GiB\n    scheduler-options: "
        "{dashboard_address: ':0'}\n",
    )
    with jobqueue_cluster("slurm", config_file=config) as cluster:
        script = cluster.job_script()
        # dask-cuda names its workers <job>-0 .. <job>-3: the groups jobqueue expects.
        assert cluster.new_spec["group"] == ["-0", "-1", "-2", "-3"]
        assert cluster.scheduler_address in script
    expected = job_script("slurm", config_file=config).splitlines()
    got = script.splitlines()
    assert [x for x in got if x.startswith("#SBATCH")] == [
        x for x in expected if x.startswith("#SBATCH")
    ]
    assert re.sub(r"tcp://\S+ --name \S+", "", got[-1]) == re.sub(
        r"tcp://\S+ --name \S+", "", expected[-1]
    )


def test_submitting_without_slurm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    config = site_config(
        tmp_path, "jobqueue:\n  slurm:\n    scheduler-options: {dashboard_address: ':0'}\n"
    )
    settings = load_settings(
        overrides={"cluster": "slurm", "jobs": 2, "cluster_config": str(config)}
    )
    with pytest.raises(ConfigError, match="sbatch not found.*login node"), open_client(settings):
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
    settings = text[text.index("# ---- settings") : text.index("# ---- end of settings")]
    # Every #SBATCH line is in the settings block, before the first command.
    directives = [x for x in text.splitlines() if x.startswith("#SBATCH")]
    assert directives and all(x in settings.splitlines() for x in directives)
    assert any(x.startswith("#SBATCH --gres=gpu:") for x in directives)
    for name in ("INPUT", "OUT", "CLASSIFIER", "ESM_MODEL", "DNABERT_MODEL", "MODEL_CACHE"):
        assert re.search(rf"^{name}=", settings, re.M), name
    assert "setup_environment()" in settings
    srun = text[text.index("\nsrun ") :]
    words = shlex.split(srun.replace("\\\n", " "), comments=True)
    assert "--ntasks=$((SLURM_JOB_NUM_NODES" in words[1]
    assert "--distribution=cyclic" in words and "--kill-on-bad-exit=1" in words
    assert words[words.index("virnuc-dask") :][:2] == ["virnuc-dask", "predict"]
    assert option(words, "--cluster") == "slurm-runner"
    assert option(words, "--worker-type") == "$worker_type"
    assert (
        "--esm-model" in " ".join(words[words.index("virnuc-dask") :]) or '"${models[@]}"' in srun
    )


def test_cpu_jobs_run_plain_dask_workers_without_gpu_request():
    script = job_script("slurm", worker_type="cpu")
    lines = script.splitlines()
    assert not [x for x in lines if "gpu" in x.lower() and x.startswith("#SBATCH")]
    assert {"#SBATCH --cpus-per-task=2", "#SBATCH --mem=4G"} <= set(lines)
    command = worker_command(script, "distributed.cli.dask_worker")
    assert option(command, "--nthreads") == "2"
    assert option(command, "--resources") == "GPU=1"
    command = worker_command(
        job_script("slurm", worker_type="cpu", processes=2, cores=8), "distributed.cli.dask_worker"
    )
    assert option(command, "--nworkers") == "2" and option(command, "--nthreads") == "4"
    pbs = job_script("pbs", worker_type="cpu").splitlines()
    assert "#PBS -l select=1:ncpus=2:mem=4096MB" in pbs


def test_job_directives_skip_also_removes_the_gpu_request(tmp_path):
    config = site_config(
        tmp_path,
        """
jobqueue:
  slurm:
    job-directives-skip: ["--gres", "-t "]
  pbs:
    job-directives-skip: ["ngpus"]
""",
    )
    lines = job_script("slurm", config_file=config).splitlines()
    assert not [x for x in lines if x.startswith(("#SBATCH --gres", "#SBATCH -t "))]
    assert "#SBATCH --cpus-per-task=8" in lines
    pbs = job_script("pbs", config_file=config).splitlines()
    assert not [x for x in pbs if "ngpus" in x]
    # ... and a request of the user's own replaces it.
    config.write_text('jobqueue:\n  slurm:\n    job-extra-directives: ["--gres=gpu:a100:2"]\n')
    lines = job_script("slurm", config_file=config).splitlines()
    assert [x for x in lines if "gpu" in x and x.startswith("#SBATCH")] == [
        "#SBATCH --gres=gpu:a100:2"
    ]


def test_flags_beat_the_cluster_config_which_beats_the_profile(tmp_path):
    config = site_config(tmp_path, "jobqueue:\n  slurm:\n    cores: 16\n    memory: 64GiB\n")
    lines = job_script("slurm", config_file=config, worker_type="cpu").splitlines()
    assert {"#SBATCH --cpus-per-task=16", "#SBATCH --mem=64G"} <= set(lines)
    lines = job_script(
        "slurm", config_file=config, worker_type="cpu", cores=4, memory="6GiB"
    ).splitlines()
    assert {"#SBATCH --cpus-per-task=4", "#SBATCH --mem=6G"} <= set(lines)


def test_job_script_command_shows_what_predict_submits(tmp_path, capsys):
    assert (
        main(
            [
                "job-script",
                "slurm",
                "--worker-type",
                "cpu",
                "--job-cores",
                "3",
                "--job-memory",
                "5GiB",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert {"#SBATCH --cpus-per-task=3", "#SBATCH --mem=5G"} <= set(out.splitlines())
    assert "-m distributed.cli.dask_worker" in out and "--gres" not in out
    with jobqueue_cluster(
        "slurm",
        worker_type="cpu",
        cores=3,
        memory="5GiB",
        scheduler_options={"dashboard_address": ":0"},
    ) as cluster:
        submitted = cluster.job_script()
    assert [x for x in submitted.splitlines() if x.startswith("#")] == [
        x for x in out.splitlines() if x.startswith("#")
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"worker_type": "tpu", "cluster": "slurm"}, "worker_type must be one of gpu, cpu"),
        ({"worker_type": "cpu"}, "worker_type applies to cluster slurm, pbs or slurm-runner"),
        ({"job_cores": 4, "cluster": "slurm-runner"}, "job_cores applies to cluster slurm or pbs"),
        ({"start_timeout": 0, "cluster": "slurm"}, "start_timeout must be a number of seconds"),
        ({"job_replacements": -1}, "job_replacements must be an integer >= 0"),
    ],
)
def test_bad_job_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=overrides)


def run_gpu_lines(
    tmp_path: Path, env: dict[str, str], node_gpus: int
) -> subprocess.CompletedProcess:
    """The PBS job's GPU lines in bash, on a stand-in node whose `nvidia-smi -L` lists
    ``node_gpus`` GPUs (only a PBS GPU node could show the real one)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        + "".join(f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-{i})'\n" for i in range(node_gpus))
    )
    smi.chmod(0o755)
    script = job_script("pbs", processes=2, cores=16, memory="64GiB").splitlines()
    lines = [line for line in script if "CUDA_VISIBLE_DEVICES" in line]
    assert len(lines) == 2
    return subprocess.run(
        ["bash", "-c", "\n".join([*lines, 'echo "devices=${CUDA_VISIBLE_DEVICES-unset}"'])],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
    )


def test_a_pbs_gpu_job_without_cuda_visible_devices_keeps_to_its_gpus(tmp_path):
    # The site's cgroup hook set it: kept as it is.
    ran = run_gpu_lines(tmp_path, {"CUDA_VISIBLE_DEVICES": "3,5"}, node_gpus=8)
    assert ran.returncode == 0 and ran.stdout.strip() == "devices=3,5"
    # Torque writes the job's GPUs to PBS_GPUFILE.
    gpufile = tmp_path / "gpus"
    gpufile.write_text("node7-gpu2\nnode7-gpu6\n")
    ran = run_gpu_lines(tmp_path, {"PBS_GPUFILE": str(gpufile)}, node_gpus=8)
    assert ran.returncode == 0 and ran.stdout.strip() == "devices=2,6"
    # Nothing says which GPUs are the job's, and the node has more: refused.
    ran = run_gpu_lines(tmp_path, {}, node_gpus=8)
    assert ran.returncode == 1 and "devices=" not in ran.stdout
    assert "CUDA_VISIBLE_DEVICES is not set and this node has more GPUs than the job's 2" in (
        ran.stderr
    )
    # A node with just the job's GPUs: every one is the job's.
    ran = run_gpu_lines(tmp_path, {}, node_gpus=2)
    assert ran.returncode == 0 and ran.stdout.strip() == "devices=unset"


def test_slurm_jobs_leave_gpu_selection_to_slurm():
    assert "PBS_GPUFILE" not in job_script("slurm")
    assert "PBS_GPUFILE" not in job_script("pbs", worker_type="cpu")
