"""A run's TLS credentials and the dashboard line of a cluster started here."""

from __future__ import annotations

import stat
import threading
import time

import pytest
from distributed import Client, LocalCluster

from virnuc_dask.cluster import credentials
from virnuc_dask.cluster.dashboard_access import dashboard_text, is_local
from virnuc_dask.errors import ClusterError


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_credentials_are_the_users_alone(tmp_path):
    directory, security = credentials.write(tmp_path, ".tls-7.0.0")
    assert directory == tmp_path / ".tls-7.0.0"
    assert mode(directory) == 0o700
    assert {p.name: mode(p) for p in directory.iterdir()} == {"cert.pem": 0o600, "key.pem": 0o600}
    assert [p.name for p in tmp_path.iterdir()] == [".tls-7.0.0"]  # nothing left aside
    assert security.require_encryption
    assert security.tls_worker_key == str(directory / "key.pem")
    credentials.remove(directory)
    assert not directory.exists()


def test_only_the_runs_credentials_reach_its_scheduler(tmp_path):
    _, security = credentials.write(tmp_path)
    with LocalCluster(
        n_workers=1, processes=False, security=security, dashboard_address=":0"
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        with Client(cluster, security=security) as client:
            assert client.submit(sum, [1, 2]).result() == 3
        with pytest.raises(OSError):  # another run's credentials
            Client(cluster.scheduler_address, security=credentials.in_memory(), timeout=5)
        with pytest.raises(OSError):  # plain TCP to a TLS port
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout=5)


def test_waiting_for_credentials_is_bounded_and_names_the_writer(tmp_path):
    with pytest.raises(ClusterError, match="rank 0 did not write the run's TLS credentials"):
        credentials.wait(tmp_path / ".tls-1", timeout=0.3, writer="rank 0")
    writer = threading.Timer(0.3, credentials.write, args=(tmp_path, ".tls-1"))
    writer.start()
    started = time.monotonic()
    security = credentials.wait(tmp_path / ".tls-1", timeout=30, writer="rank 0")
    assert time.monotonic() - started < 10
    assert security.tls_ca_file == str(tmp_path / ".tls-1" / "cert.pem")


@pytest.mark.parametrize(
    "address, local",
    [("localhost:8787", True), ("127.0.0.1:0", True), (":8787", False), ("0.0.0.0:8787", False)],
)
def test_which_dashboard_addresses_are_local(address, local):
    assert is_local(address) is local


def test_the_dashboard_line_says_how_to_reach_it():
    here = dashboard_text("localhost:8787", port=8787, scheduler_host="vm", here="vm")
    assert here.startswith("http://localhost:8787/status (this machine only")
    assert "ssh -L 8787:localhost:8787 vm" in here
    # The scheduler on another node (slurm-runner's rank 0): that node is named.
    there = dashboard_text("localhost:8787", port=41000, scheduler_host="node7", here="node9")
    assert "on node7, where the scheduler runs" in there
    assert "ssh -L 41000:localhost:41000 node7" in there
    assert "ssh -J LOGIN -L 41000:localhost:41000 node7" in there
    opened = dashboard_text(":8787", port=8787, scheduler_host="node7", here="login1")
    assert opened.startswith("http://node7:8787/status (listening on :8787: anyone")
