"""A worker leaving the run because of its models or its device (on its event loop).

The scheduler hears why first (:func:`report`: an event, which the client reads for
its log, its stop message and the run summary), then the worker gives up the
resource that embedding tasks ask for and closes with its nanny (:func:`leave`), so
that it is not restarted into the same failure and its tasks go to the other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

# How long a leaving worker waits for the scheduler to copy its results elsewhere.
RETIRE_TIMEOUT_S = 60.0


async def report(worker: Any, topic: str, msg: dict[str, Any]) -> None:
    """An event on the scheduler, sent directly (it must arrive before the worker closes)."""
    try:
        await worker.scheduler.log_event(topic=topic, msg=msg)
    except OSError as exc:
        logger.warning("could not report the models' state to the scheduler: %s", exc)


async def leave(worker: Any, resource: str, *, reason: str, stuck: bool = False) -> None:
    """Give ``resource`` up and close, nanny included.

    The scheduler first moves what this worker holds (finished partitions' rows on
    their way to the store) to the other workers. A ``stuck`` worker's task thread
    never returns: its nanny then kills the process (``terminate`` waits a few seconds
    for the worker to close, then kills it); a worker without a nanny closes without
    waiting for that thread.
    """
    with contextlib.suppress(OSError, KeyError):  # the scheduler may be gone already
        await worker.set_resources(**{resource: 0})
    if not stuck:
        worker.loop.add_callback(_close, worker, reason)
        return
    await _hand_over(worker)
    if worker.nanny:
        async with worker.rpc(worker.nanny) as nanny:
            await nanny.close_gracefully(reason=reason)  # not restarted
            await nanny.terminate(reason=reason)
    else:
        await worker.close(nanny=False, executor_wait=False, reason=reason)


async def _close(worker: Any, reason: str) -> None:
    """Hand the results over, then have the scheduler remove and close the worker; the
    worker closes its nanny first, so it is not restarted.

    The close is sent on the scheduler's stream to the worker: when the hand-over
    fails, the scheduler sets the worker back to running on that stream, and a close
    the worker started itself would be undone by it, then run a second time when the
    stream ends (racing the first for the connection pool: a traceback in the log).
    """
    await _hand_over(worker)
    try:
        await worker.scheduler.unregister(
            address=worker.address, close=True, stimulus_id=_stimulus("close")
        )
    except OSError as exc:  # the scheduler is gone: close here
        logger.info("closing without the scheduler (%r): %s", exc, reason)
        await worker.close(nanny=True, reason=reason)


async def _hand_over(worker: Any) -> None:
    """Have the scheduler copy what this worker holds to the others (bounded)."""
    try:
        await asyncio.wait_for(
            worker.scheduler.retire_workers(
                workers=[worker.address],
                close_workers=False,
                remove=False,
                stimulus_id=_stimulus("hand-over"),
            ),
            RETIRE_TIMEOUT_S,
        )
    except (TimeoutError, OSError) as exc:
        logger.warning("could not hand this worker's results to the others: %r", exc)


def _stimulus(what: str) -> str:
    return f"virnuc-dask-leaving-{what}-{time.time()}"
