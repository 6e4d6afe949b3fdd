"""Cut reads into fixed-size, overlapping chunks exactly as VirNucPro does.

VirNucPro's ``split_fasta_chunk`` cuts a read of length ``n`` into
``k = ceil(n / c)`` chunks of size ``c``.  The total overlap ``r = k*c - n`` is
meant to be spread over the chunk boundaries: ``q = floor(r / k)``,
``u = r - q*(k - 1)``, step list ``[q + 1] * u + [q] * max(0, k - 1 - u) + [0]``;
chunk ``j`` starts at ``j*c`` minus the sum of the first ``j`` steps and ends at
``min(start + c, n)``.  Because ``u`` is usually larger than ``k - 1`` the steps
add up to less than ``r`` and the last chunk is cut short by the read end
(301 @ 300 -> [0, 300), [150, 301)).  That quirk is reproduced on purpose: the
trained classifier saw such chunks.

>>> chunk_spans(1000, 300)
[(0, 300), (249, 549), (498, 798), (747, 1000)]
>>> chunk_record("r1", "ACGTA", 3)
[('r1_chunk_1', 'ACG'), ('r1_chunk_2', 'GTA')]
"""

from __future__ import annotations

__all__ = ["chunk_record", "chunk_spans"]


def chunk_spans(length: int, chunk_size: int) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` spans of the chunks of a read of ``length`` bases.

    Raises ``ValueError`` for ``chunk_size < 1`` or ``length < 1`` (the original
    divides by zero on an empty read).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if length < 1:
        raise ValueError(f"cannot chunk a sequence of length {length}")
    k = -(-length // chunk_size)
    overlap = k * chunk_size - length  # 0 <= overlap < chunk_size
    q = overlap // k  # exact: same as the original's int(overlap / k) for these sizes
    u = overlap - q * (k - 1)  # how many boundaries get q + 1 (may exceed k - 1)
    # chunk j starts at j*c minus the first j steps, j*q + min(j, u); only the
    # last chunk can reach past the read end (it is then cut short)
    step = chunk_size - q
    last = min(u, k - 1)
    starts = [j * (step - 1) for j in range(last + 1)]
    starts += [j * step - u for j in range(last + 1, k)]
    spans = [(start, start + chunk_size) for start in starts]
    spans[-1] = (starts[-1], min(starts[-1] + chunk_size, length))
    return spans


def chunk_record(read_id: str, sequence: str, chunk_size: int) -> list[tuple[str, str]]:
    """``[(f"{read_id}_chunk_{k}", chunk), ...]`` with ``k`` from 1 and the case kept."""
    return [
        (f"{read_id}_chunk_{k}", sequence[start:stop])
        for k, (start, stop) in enumerate(chunk_spans(len(sequence), chunk_size), start=1)
    ]
