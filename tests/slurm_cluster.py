"""A real one-node SLURM for the tests: munged, slurmctld and slurmd started by hand.

Everything lives in one directory: a generated ``slurm.conf`` (this node's CPUs and
memory as ``slurmd -C`` reports them, ``select/cons_tres``, no GPUs), a munge key and
socket, the daemons' state, spool and log files. The daemons run in the foreground
as children of this process and are stopped by their PIDs. Client commands find the
cluster through ``SLURM_CONF`` (see :meth:`LocalSlurm.env`).

Needs root (slurmd starts jobs as their users) and Debian's ``slurm-wlm`` and
``munge`` packages. By hand::

    python tests/slurm_cluster.py /tmp/slurm     # starts it, prints the environment
                                                 # to use, stops it on Ctrl-C
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from helpers import wait_until

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")


def missing_programs() -> list[str]:
    """SLURM and munge programs this machine lacks (empty when a cluster can start)."""
    return [
        p
        for p in (*DAEMONS, *CLIENTS)
        if shutil.which(p) is None and not Path("/usr/sbin", p).exists()
    ]


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_line() -> str:
    """This node as ``slurmd -C`` describes it (``NodeName=vm CPUs=2 ... RealMemory=...``)."""
    out = subprocess.run(
        [_program("slurmd"), "-C"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    (line,) = [x for x in out.splitlines() if x.startswith("NodeName=")]
    return line.strip()


class LocalSlurm:
    """munged + slurmctld + slurmd for this node, configured in ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.conf = self.base / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.node = node_line()
        self.node_name = self.node.split()[0].split("=", 1)[1]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment in which sbatch, srun, squeue ... talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def write_config(self) -> None:
        for sub in ("ctld", "spool", "munge", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "munge").chmod(0o700)
        key = self.base / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = self.base / "munge" / "munge.socket"
        self.conf.write_text(f"""\
ClusterName=virnuc-test
SlurmctldHost={self.node_name}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={self.base / "ctld"}
SlurmdSpoolDir={self.base / "spool"}
SlurmctldPidFile={self.base / "slurmctld.pid"}
SlurmdPidFile={self.base / "slurmd.pid"}
SlurmctldLogFile={self.base / "log" / "slurmctld.log"}
SlurmdLogFile={self.base / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=sched_interval=2
KillWait=10
{self.node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, *, timeout: float = 60) -> None:
        """Start the three daemons; return once the node is idle (at most ``timeout`` s)."""
        self.write_config()
        log = self.base / "log"
        env = self.env()
        self._spawn(
            "munged",
            [
                _program("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={self.base / 'munge' / 'munge.key'}",
                f"--pid-file={self.base / 'munge' / 'munged.pid'}",
                f"--seed-file={self.base / 'munge' / 'munged.seed'}",
                f"--log-file={log / 'munged.log'}",
            ],
            env,
        )
        self._wait_for(lambda: self.munge_socket.exists(), "munged's socket", 20)
        self._spawn("slurmctld", [_program("slurmctld"), "-D", "-i", "-f", str(self.conf)], env)
        self._spawn("slurmd", [_program("slurmd"), "-D", "-f", str(self.conf)], env)
        self._wait_for(self.node_idle, f"node {self.node_name} to be idle", timeout)

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        out = open(self.base / "log" / f"{name}.out", "wb")  # noqa: SIM115 - the daemon's
        self.procs[name] = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def node_idle(self) -> bool:
        proc = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=20,
        )
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def _wait_for(self, ready, what: str, timeout: float) -> None:
        def done() -> bool:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode} while waiting "
                        f"for {what}; see {self.base / 'log'}"
                    )
            return ready()

        try:
            wait_until(done, timeout, interval=0.5, what=what)
        except AssertionError:
            self.stop()
            raise TimeoutError(
                f"waited {timeout:.0f} s for {what}; see the logs in {self.base / 'log'}"
            ) from None

    def jobs(self) -> list[str]:
        """Ids of the jobs in the queue (pending or running)."""
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return out.split()

    def job_state(self, job_id: str) -> str:
        """State of a job, also shortly after it ended (COMPLETED, FAILED, CANCELLED ...)."""
        out = subprocess.run(
            ["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return out.strip()

    def cancel_all(self) -> None:
        subprocess.run(
            ["scancel", "--full", "-u", "root"], env=self.env(), capture_output=True, timeout=20
        )

    def stop(self) -> None:
        """Stop the daemons by PID: slurmd, slurmctld, then munged."""
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


if __name__ == "__main__":
    cluster = LocalSlurm(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/slurm"))
    cluster.start()
    sys.stdout.write(f"export SLURM_CONF={cluster.conf}\n")  # for the calling shell to eval
    sys.stdout.flush()
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
