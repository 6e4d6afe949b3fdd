"""One version's side of ``benchmarks/regression.py``: a long-lived process that runs the
fixed workload whenever the driver asks.

    python benchmarks/regression_workload.py ROOT INPUT MODELS_JSON WORK

``ROOT`` is the project directory of the version under test; it goes first on
``sys.path`` so that ``import virnuc_dask`` is that version's code (checked: the
process stops if the import resolves elsewhere). The process starts an in-process
one-worker Dask cluster once, then reads commands from stdin: ``run`` runs
:func:`virnuc_dask.predict` on ``INPUT`` with the models of ``MODELS_JSON`` (fp32,
every other setting at that version's default) and answers one line
``@@result {"end_to_end": s, "end_to_end_cpu": s, "esm": s, "dnabert": s}``: the wall
and CPU time of the call (all threads of this process: the cluster is in-process) and
each embedding stage's seconds from the run summary (absent where that version's
summary lacks them). ``quit`` ends it. Everything else it prints goes to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

MARK = "@@result "


def main(argv: list[str]) -> int:
    root, fasta, models_json, work = argv
    sys.path.insert(0, str(Path(root).resolve()))
    out_stream = sys.stdout
    sys.stdout = sys.stderr  # only the result lines reach the driver
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import dask
    from distributed import Client, LocalCluster

    import virnuc_dask

    imported = Path(virnuc_dask.__file__).resolve()
    if Path(root).resolve() not in imported.parents:
        print(f"virnuc_dask imported from {imported}, not from {root}", file=sys.stderr)
        return 1
    try:
        from virnuc_dask.cluster.workers import WORKER_ENV
    except ImportError:  # a version without the worker environment settings
        WORKER_ENV = {}
    models = json.loads(Path(models_json).read_text())
    with (
        dask.config.set(WORKER_ENV),
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            resources={"GPU": 1},
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        out_stream.write("@@ready\n")
        out_stream.flush()
        for runs, line in enumerate(sys.stdin, 1):
            command = line.strip()
            if command == "quit":
                break
            if command != "run":
                print(f"unknown command {command!r}", file=sys.stderr)
                return 1
            t, cpu = time.perf_counter(), time.process_time()
            result = virnuc_dask.predict(
                fasta,
                out=os.path.join(work, f"run{runs % 2}"),
                client=client,
                precision="fp32",
                overwrite=True,
                offline=True,
                **models,
            )
            seconds = time.perf_counter() - t
            cpu_seconds = time.process_time() - cpu
            if result.exit_code != 0:
                print(f"predict exited {result.exit_code}", file=sys.stderr)
                return 1
            times = {"end_to_end": seconds, "end_to_end_cpu": cpu_seconds}
            for stage, figures in result.summary.get("embedding", {}).items():
                if isinstance(figures, dict) and "seconds" in figures:
                    times[stage] = figures["seconds"]
            out_stream.write(MARK + json.dumps(times) + "\n")
            out_stream.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
