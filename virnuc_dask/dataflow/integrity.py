"""Finished partitions that are no longer what was written: found on resume, recomputed.

A partition counts as finished when its manifest entry exists and passes its checksum
(:meth:`~virnuc_dask.dataflow.store.EmbeddingStore.scan`). Before a run reuses it,
:func:`check_partition` (a task on a worker) reads back every chunk of the partition:
each must exist where the entry says it was written and pass its CRC-32C. A chunk
overwritten with other bytes, cut short, removed, or with a single bit flipped fails.
:func:`damaged_partitions` runs the checks for a run and returns what is wrong with
each damaged partition; the pipeline forgets those entries (the partitions are
computed again), logs them and lists them in the run summary.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zarr
from distributed import Client

from virnuc_dask.dataflow.dashboard import unique_key
from virnuc_dask.dataflow.embedding_graph import DEDUP_PRIORITY
from virnuc_dask.dataflow.store import EmbeddingStore
from virnuc_dask.partition_result import PartitionResult

logger = logging.getLogger(__name__)


def check_partition(store_path: str, entry: PartitionResult) -> str | None:
    """What is wrong with ``entry``'s chunks in the store at ``store_path``; None: nothing."""
    root = Path(store_path)
    group = zarr.open_group(root, mode="r")
    arrays = set(group.array_keys())  # embeddings dropped by a later run are not damage
    for chunk in entry.chunks:
        if chunk.split("/")[0] in arrays and not (root / chunk).is_file():
            return f"chunk {chunk} is missing"
    stop = entry.row_start + entry.rows
    for name, array in group.arrays():
        try:
            array[entry.row_start : stop]
        except (ValueError, RuntimeError) as exc:  # what Zarr's codecs raise for bad bytes
            index = entry.row_start // array.chunks[0]
            return f"chunk {name}/c/{index}: {exc}"
    return None


def damaged_partitions(client: Client, store: EmbeddingStore) -> dict[int, str]:
    """Partitions recorded as finished in ``store`` that are damaged (their entry or a
    chunk); by index, what is wrong. Their entries are removed."""
    entries, damaged = store.scan()
    if entries:
        found = client.gather(
            client.map(
                check_partition,
                [str(store.path)] * len(entries),
                list(entries.values()),
                key=[unique_key("verify-store") for _ in entries],
                priority=DEDUP_PRIORITY,  # before the blocks still to read
            )
        )
        damaged.update((p, why) for p, why in zip(entries, found, strict=True) if why)
    chunk_rows = int(store.group().attrs.get("chunk_rows", 1))
    for p, why in sorted(damaged.items()):
        entry = entries.get(p)
        lo = entry.row_start if entry else p * chunk_rows
        rows = f"rows {lo}-{lo + entry.rows - 1}" if entry else f"rows from {lo}"
        logger.warning("partition %d (%s) is damaged and is computed again: %s", p, rows, why)
        store.forget(p)
    return damaged
