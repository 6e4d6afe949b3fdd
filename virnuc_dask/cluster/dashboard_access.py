"""How the user reaches the dashboard of a cluster virnuc-dask started.

The dashboard listens where ``--dashboard-address`` says (``localhost:8787`` by
default: only processes of the machine the scheduler runs on can open it, not the
rest of the network). The line logged at start names that machine and the ``ssh -L``
tunnel that brings the dashboard to the user's own computer.

>>> dashboard_text("localhost:8787", port=8787, scheduler_host="node7", here="login1")
'http://localhost:8787/status on node7, where the scheduler runs (localhost only); \
to open it from your computer: ssh -L 8787:localhost:8787 node7 (through a login \
node: ssh -J LOGIN -L 8787:localhost:8787 node7), then open http://localhost:8787/status'
"""

from __future__ import annotations

import socket

from distributed import Client

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
NO_DASHBOARD = "none (the scheduler runs without one; it needs bokeh)"


def is_local(address: str) -> bool:
    """Whether a ``host:port`` dashboard address listens on the loopback interface only."""
    host = address.rpartition(":")[0] if ":" in address else address
    return host.strip() in LOCAL_HOSTS


def dashboard_text(address: str, *, port: int, scheduler_host: str, here: str) -> str:
    """What to open, and how, for a dashboard on ``port`` bound as ``address`` says."""
    url = f"http://localhost:{port}/status"
    if not is_local(address):
        return (
            f"http://{scheduler_host}:{port}/status (listening on {address}: anyone who "
            f"can reach {scheduler_host} can watch this run)"
        )
    tunnel = f"ssh -L {port}:localhost:{port} {scheduler_host}"
    if scheduler_host == here:
        return f"{url} (this machine only; from your computer: {tunnel}, then open {url})"
    return (
        f"{url} on {scheduler_host}, where the scheduler runs (localhost only); to open "
        f"it from your computer: {tunnel} (through a login node: ssh -J LOGIN -L "
        f"{port}:localhost:{port} {scheduler_host}), then open {url}"
    )


def describe_dashboard(client: Client, address: str) -> str:
    """The dashboard line of the scheduler ``client`` is connected to, started with
    ``dashboard_address=address``."""
    port = client.scheduler_info().get("services", {}).get("dashboard")
    if port is None:
        return NO_DASHBOARD
    scheduler_host = client.run_on_scheduler(socket.gethostname)
    here = socket.gethostname()
    return dashboard_text(address, port=port, scheduler_host=scheduler_host, here=here)
