"""HPC runs on a real SLURM: jobs go through sbatch/srun/squeue/scancel of a one-node
cluster the ``slurm`` fixture starts (no GPUs configured, 2 CPUs: three tasks need
--overcommit). Every run has a time bound; every output is compared with a local run's.
"""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import TINY, assert_matches_reference, model_flags, wait_until, write_perf_reads
from probe import assert_refused, listening, probe_as

# One xdist worker runs them all: they share the session's SLURM.
pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "virnuc-dask")
MODELS = model_flags()
RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv", "read_predictions.tsv")
PARTITIONS_DONE = re.compile(r"· ([1-9]\d*)/\d+ partitions")


def assert_same_results(out: Path, expected: Path) -> None:
    for name in RESULTS:
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name


def predict(slurm, cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "predict", *args],
        cwd=cwd,
        env=slurm.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(slurm, command: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(
            command, cwd=cwd, env=slurm.env(), stdout=fh, stderr=subprocess.STDOUT, text=True
        )


def wait_for(
    predicate,
    what: str,
    timeout: float,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:

    def done() -> bool:
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"exited with {proc.returncode} before {what}:\n{log.read_text() if log else ''}"
            )
        return predicate()

    try:
        wait_until(done, timeout, interval=0.3, what=what)
    except AssertionError as exc:
        pytest.fail(f"{exc}\n{log.read_text() if log else ''}")


def partitions_done(log: Path) -> bool:
    return bool(PARTITIONS_DONE.search(log.read_text()))


@pytest.fixture(scope="module")
def reads(tmp_path_factory) -> Path:
    """Enough reads for a run that can be interrupted mid-way (1,090 ORFs, 28 partitions)."""
    return write_perf_reads(
        tmp_path_factory.mktemp("slurm-reads") / "reads.fa", 500, seed=5, prefix="hpc"
    )


@pytest.fixture(scope="module")
def local_run(reads, tmp_path_factory) -> Path:
    """The same prediction of ``reads`` on a local cluster: what every run must equal."""
    out = tmp_path_factory.mktemp("slurm-local") / "out"
    proc = subprocess.run(
        [
            CLI,
            "predict",
            str(reads),
            *MODELS,
            "--partition-rows",
            "40",
            "--out",
            str(out),
            "--workers",
            "1",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_gpu_jobs_on_a_cluster_without_gpus_fail_with_sbatchs_message(slurm, reference, tmp_path):
    started = time.monotonic()
    proc = predict(
        slurm,
        tmp_path,
        str(reference / "dev" / "basic" / "input.fa"),
        *MODELS,
        "--out",
        "out",
        "--cluster",
        "slurm",
        "--worker-type",
        "gpu",
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 60
    assert (
        "sbatch rejected the job: sbatch: error: Invalid generic resource (gres) "
        "specification" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert slurm.jobs() == []


def test_cpu_job_gives_the_local_outputs(slurm, reference, tmp_path):
    proc = predict(
        slurm,
        tmp_path,
        str(reference / "dev" / "basic" / "input.fa"),
        *MODELS,
        "--out",
        "out",
        "--cluster",
        "slurm",
        "--worker-type",
        "cpu",
        "--jobs",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 job(s) of 1 CPU worker(s) submitted" in proc.stderr
    assert re.search(r"job \d+ submitted", proc.stderr)
    assert_matches_reference(tmp_path / "out", reference / "dev" / "basic" / "L300")
    (log,) = tmp_path.glob("slurm-*.out")  # the job's own log, in the submission directory
    assert "Starting Worker plugin virnuc-dask-models" in log.read_text()
    assert slurm.jobs() == []


def cpu_job_run(reads: Path) -> list[str]:
    """``predict`` of ``reads`` (as ``local_run``) in a CPU batch job, progress every 0.5 s."""
    return [
        CLI,
        "predict",
        str(reads),
        *MODELS,
        "--partition-rows",
        "40",
        "--out",
        "out",
        "--cluster",
        "slurm",
        "--worker-type",
        "cpu",
        "--progress-interval",
        "0.5",
    ]


def test_job_cancelled_mid_run_is_replaced_and_the_run_completes(slurm, reads, local_run, tmp_path):
    log = tmp_path / "run.log"
    proc = start(
        slurm,
        cpu_job_run(reads),
        tmp_path,
        log,
    )
    try:
        wait_for(lambda: partitions_done(log), "finished partition", 120, proc, log)
        (job,) = slurm.jobs()
        subprocess.run(["scancel", job], env=slurm.env(), check=True, timeout=30)
        cancelled = time.monotonic()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert time.monotonic() - cancelled < 120
    assert f"job {job} ended (cancelled); submitting a replacement job (1 of at most 8)" in text
    assert "(gone)" in text  # the lost worker, in the progress lines
    assert_same_results(tmp_path / "out", local_run)
    assert slurm.jobs() == []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_another_user_cannot_run_code_on_a_batch_job_run(
    slurm, reads, local_run, other_user, tmp_path
):
    """From the submit host, another user tries the scheduler (in the submitting
    process) and the worker (in the batch job) of a --cluster slurm run."""
    out = tmp_path / "out"
    log = tmp_path / "run.log"
    proc = start(
        slurm,
        cpu_job_run(reads),
        tmp_path,
        log,
    )
    try:
        wait_for(lambda: partitions_done(log), "finished partition", 120, proc, log)
        (tls,) = out.glob(".tls-*")  # the credentials the job's worker reads
        assert mode(tls) == 0o700 and {mode(p) for p in tls.iterdir()} == {0o600}
        job_processes = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any(str(tls) in part for part in p.info["cmdline"] or ())
        ]
        assert job_processes, "the job's worker names the credentials on its command line"
        ports = listening([proc.pid, *job_processes])
        assert len(ports) >= 5, ports  # scheduler, dashboard; nanny, worker, its HTTP
        results = probe_as(other_user, ports)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert_refused(results, ports)
    assert proc.returncode == 0, text
    host = socket.gethostname()
    assert re.search(
        rf"dashboard: http://localhost:\d+/status .*ssh -L \d+:localhost:\d+ {host}", text
    )
    assert_same_results(out, local_run)
    assert not list(out.glob(".tls-*"))
    assert slurm.jobs() == []


def test_pending_job_is_shown_and_bounded_by_start_timeout(slurm, reference, tmp_path):
    # Another job holds both CPUs of the node: ours stays pending (Resources).
    subprocess.run(
        ["sbatch", "--cpus-per-task=2", "--mem=1G", "--output=/dev/null", "--wrap", "sleep 300"],
        env=slurm.env(),
        check=True,
        timeout=30,
        capture_output=True,
    )
    try:
        started = time.monotonic()
        proc = predict(
            slurm,
            tmp_path,
            str(reference / "dev" / "basic" / "input.fa"),
            *MODELS,
            "--out",
            "out",
            "--cluster",
            "slurm",
            "--worker-type",
            "cpu",
            "--start-timeout",
            "8",
            timeout=90,
        )
        elapsed = time.monotonic() - started
    finally:
        slurm.cancel_all()
    assert proc.returncode == 1, proc.stderr
    assert elapsed < 60
    assert re.search(r"job \d+ pending \(Resources\) 0:00", proc.stderr)
    assert re.search(
        r"no job started within --start-timeout 8 s: job \d+ pending "
        r"\(Resources\) 0:\d\d; the jobs are cancelled",
        proc.stderr,
    )
    assert "Traceback" not in proc.stderr


def test_job_whose_worker_cannot_start_ends_the_run_with_its_log(slurm, reference, tmp_path):
    # GPU workers without the GPU request (removed with job-directives-skip): the job
    # runs, and its worker fails at start (no dask-cuda or no GPU on this node).
    config = tmp_path / "site.yaml"
    config.write_text('jobqueue:\n  slurm:\n    job-directives-skip: ["--gres"]\n')
    started = time.monotonic()
    proc = predict(
        slurm,
        tmp_path,
        str(reference / "dev" / "basic" / "input.fa"),
        *MODELS,
        "--out",
        "out",
        "--cluster",
        "slurm",
        "--worker-type",
        "gpu",
        "--job-cores",
        "2",
        "--job-memory",
        "2GiB",
        "--cluster-config",
        str(config),
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 120
    match = re.search(
        r"job (\d+) ended \((\w+)\) before its worker connected to the "
        r"scheduler; last lines of (\S+):",
        proc.stderr,
    )
    assert match, proc.stderr
    assert match.group(2) in ("failed", "completed")
    assert Path(match.group(3)) == tmp_path / f"slurm-{match.group(1)}.out"
    assert "Traceback" not in proc.stderr.split("last lines of")[0]


def test_slurm_runner_under_srun_stops_on_scancel_and_resumes(slurm, reads, local_run, tmp_path):
    command = [
        "srun",
        "--overcommit",
        "--ntasks=3",
        "--label",
        CLI,
        "predict",
        str(reads),
        *MODELS,
        "--partition-rows",
        "40",
        "--out",
        "out",
        "--cluster",
        "slurm-runner",
        "--worker-type",
        "cpu",
        "--progress-interval",
        "0.5",
    ]
    log = tmp_path / "first.log"
    proc = start(slurm, command, tmp_path, log)
    try:
        wait_for(lambda: partitions_done(log), "finished partition", 120, proc, log)
        (job,) = slurm.jobs()
        (scheduler_file,) = (tmp_path / "out").glob(".scheduler-*.json")
        (tls,) = (tmp_path / "out").glob(f".tls-{job}.*")
        assert mode(scheduler_file) == 0o600
        assert mode(tls) == 0o700 and {mode(p) for p in tls.iterdir()} == {0o600}
        assert json.loads(scheduler_file.read_text())["address"].startswith("tls://")
        subprocess.run(["scancel", job], env=slurm.env(), check=True, timeout=30)
        cancelled = time.monotonic()
        wait_for(lambda: not slurm.jobs(), "end of the job", 10, log=log)
        proc.wait(timeout=10)
        assert time.monotonic() - cancelled < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    for rank in range(3):
        assert f"{rank}: " in text and re.search(
            rf"^{rank}: .*interrupted \(SIGTERM\); finished partitions are kept", text, re.M
        ), text
    assert "Exited with exit code 143" in text
    kept = list((tmp_path / "out" / "partitions").iterdir())
    assert kept

    # The same command again resumes: the kept partitions are reused.
    again = subprocess.run(
        command, cwd=tmp_path, env=slurm.env(), capture_output=True, text=True, timeout=180
    )
    assert again.returncode == 0, again.stdout + again.stderr
    reused = re.search(r"\d+ ORFs in \d+ partitions, (\d+) already done", again.stderr)
    assert reused and int(reused.group(1)) >= 1, again.stderr
    assert_same_results(tmp_path / "out", local_run)
    assert not list((tmp_path / "out").glob(".tls-*"))  # removed by rank 0 both times


def batch_script_with(settings: str) -> str:
    """cluster/slurm-batch.sh with its settings block replaced, everything else as is."""
    text = (ROOT / "cluster" / "slurm-batch.sh").read_text()
    start = text.index("# ---- settings")
    end = text.index("# ---- end of settings")
    return text[:start] + settings + text[end:]


def test_batch_script_runs_with_only_its_settings_edited(slurm, reference, tmp_path):
    venv = Path(sys.executable).parent.parent
    script = tmp_path / "virnuc.sh"
    script.write_text(
        batch_script_with(f"""# ---- settings
#SBATCH --job-name=virnuc-dask
#SBATCH --nodes=1
#SBATCH --ntasks=3
#SBATCH --gres=gpu:0
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=00:10:00
#SBATCH --output=virnuc-dask-%j.log
#SBATCH --overcommit
INPUT={reference / "dev" / "basic" / "input.fa"}
OUT=results
LENGTH=300
CLASSIFIER={TINY["classifier"]}
ESM_MODEL={TINY["esm_model"]}
DNABERT_MODEL={TINY["dnabert_model"]}
MODEL_CACHE=
OFFLINE=yes
setup_environment() {{
    source {venv}/bin/activate
}}
""")
    )
    proc = subprocess.run(
        ["sbatch", "--parsable", str(script)],
        cwd=tmp_path,
        env=slurm.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    wait_for(lambda: job not in slurm.jobs(), f"end of job {job}", 180)
    log = tmp_path / f"virnuc-dask-{job}.log"
    assert slurm.job_state(job) == "COMPLETED", log.read_text()
    assert "1 node(s), cpu workers" in log.read_text()
    assert_matches_reference(tmp_path / "results", reference / "dev" / "basic" / "L300")
    assert (tmp_path / "results" / "performance-report.html").is_file()
