"""The batch runner: every model's embeddings go through :func:`embed`.

A model comes in as a :class:`~virnuc_dask.models.adapter.ModelAdapter` (tokenise,
prepare a padded batch, forward to pooled rows, activation bytes per token); the runner
does the rest, the same for each model:

Batches (:mod:`virnuc_dask.core.batching`) hold at most ``toks_per_batch`` padded
tokens, longest first; ``None`` derives the budget from the device: free memory on
a GPU (:func:`device_token_budget`), the adapter's fixed budget on the CPU.

Overlap (:mod:`.prefetch`): a prefetch thread tokenises (in slices, longest first, so
the first batch starts after one slice), pads, and on CUDA pins the batch and copies it to the
device on a side stream. On CUDA the pooled results stay on the device until the
end of the call, so the host never waits for a batch to finish and keeps the
GPU's queue full.

A batch that runs out of device memory is split in halves and retried, down to
one sequence, and the model's :class:`~virnuc_dask.core.batching.TokenBudget`
(kept by the worker across partitions) is halved, so that later batches are cut to
fit instead of each failing first; it grows back after batches that run. A single
sequence that still does not fit is left out; once every other batch has run,
:class:`SequenceTooLarge` names it and carries the finished rows, which the
partition keeps. A non-finite embedding (fp16 overflow) is computed again with the
model computing in fp32 (:func:`~virnuc_dask.worker.precision.computing_in_fp32`);
one still non-finite raises :class:`NonFiniteEmbedding`, again with the finished
rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from virnuc_dask.core.batching import TokenBudget, budget_from_memory, token_budget_batches
from virnuc_dask.models.adapter import ModelAdapter, Tokens, parameter_dtype
from virnuc_dask.worker.precision import computing_in_fp32
from virnuc_dask.worker.prefetch import Prepared, prefetched, to_device, use

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class StageStats:
    """What one embedding stage did for one call (one partition)."""

    sequences: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    oom_splits: int = 0
    recomputed_fp32: int = 0  # sequences computed again in fp32 after a non-finite result
    seconds: float = 0.0
    prepare_seconds: float = 0.0  # tokenising, padding, copying (in the prefetch thread)
    wait_seconds: float = 0.0  # the forward loop waiting for a prepared batch

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


class PartialResult:
    """Rows a call finished before it raised: ``values[done]`` are final.

    ``indices`` are the input positions that failed; ``done`` is None when nothing
    was kept.
    """

    indices: list[int]
    values: np.ndarray | None = None
    done: np.ndarray | None = None
    stats: StageStats | None = None

    def keep(self, values: np.ndarray, done: np.ndarray, stats: StageStats) -> None:
        self.values, self.done, self.stats = values, done, stats


class SequenceTooLarge(PartialResult, RuntimeError):
    """A sequence alone does not fit in device memory; ``index`` is its input position
    (``indices``: every such position of the call)."""

    def __init__(
        self, index: int, model: str, detail: str, indices: Sequence[int] | None = None
    ) -> None:
        super().__init__(f"{model}: out of memory on a single sequence ({detail})")
        self.index = index
        self.indices = list(indices) if indices is not None else [index]
        self.model = model


class NonFiniteEmbedding(PartialResult, ArithmeticError):
    """A model produced inf/NaN even computing in fp32; ``indices`` are the positions."""

    def __init__(self, indices: Sequence[int], model: str, dtype: torch.dtype) -> None:
        super().__init__(
            f"{model}: non-finite embedding for {len(indices)} sequence(s) in {dtype}, "
            "also when computed again in fp32"
        )
        self.indices = list(indices)


def is_oom(exc: BaseException) -> bool:
    """CUDA OOM, also when an allocator reports it as a plain RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def device_token_budget(
    device: torch.device | str, *, bytes_per_token: int, cpu_default: int
) -> int:
    """Token budget for ``device``: from its free memory on CUDA, ``cpu_default`` elsewhere.

    Call on the worker that runs the model, after the model is placed (its weights
    are then no longer free memory).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_default
    free, _ = torch.cuda.mem_get_info(device)
    # Memory this process's allocator caches but does not use is free for the next batch.
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    budget = budget_from_memory(free, bytes_per_token)
    logger.debug("token budget %d from %.1f GiB free on %s", budget, free / 2**30, device)
    return budget


@torch.inference_mode()
def embed(
    adapter: ModelAdapter,
    texts: Sequence[str],
    *,
    toks_per_batch: int | None = None,
    device: torch.device | str = "cpu",
    prefetch: bool = True,
    budget: TokenBudget | None = None,
) -> tuple[np.ndarray, StageStats]:
    """Embeddings ``[len(texts), adapter.width]`` (float32), rows in input order.

    ``budget``: the worker's learned budget for this model (a fresh one by default);
    ``toks_per_batch`` (or the device's free memory) is its ceiling.
    """
    device = torch.device(device)
    stats = StageStats(sequences=len(texts))
    start = time.perf_counter()
    out = np.zeros((len(texts), adapter.width), dtype=np.float32)
    if not len(texts):
        return out, stats
    bound = adapter.token_bound(texts)
    if toks_per_batch is None:
        toks_per_batch = device_token_budget(
            device,
            bytes_per_token=adapter.bytes_per_token(int(bound.max())),
            cpu_default=adapter.cpu_tokens,
        )
    budget = budget or TokenBudget()
    budget.start(toks_per_batch)
    # Known once a slice is tokenised.
    tokens: list[Tokens | None] = [None] * len(texts)
    lengths = np.zeros(len(texts), dtype=np.int64)
    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def batches() -> Iterator[np.ndarray]:
        order = np.argsort(-bound, kind="stable")
        step = adapter.tokenize_slice or len(order)
        for lo in range(0, len(order), step):
            part = order[lo : lo + step]
            for i, ids in zip(part, adapter.tokenize([texts[i] for i in part]), strict=True):
                tokens[i] = ids
                lengths[i] = len(ids)
            yield from budget_batches(lengths, part, budget)

    def prepare(idx: np.ndarray) -> Prepared:
        host = adapter.prepare([tokens[i] for i in idx], lengths[idx])
        return to_device(host, device, idx, side)

    def run(items: Iterable[np.ndarray], *, prefetch: bool) -> dict[int, str]:
        return _run_batches(
            items,
            prepare,
            adapter.forward,
            lengths,
            out,
            stats,
            model_name=adapter.name,
            device=device,
            prefetch=prefetch,
            budget=budget,
        )

    too_large = run(batches(), prefetch=prefetch)
    _finish(
        adapter,
        out,
        stats,
        too_large,
        lambda bad: run(budget_batches(lengths, bad, budget), prefetch=False),
    )
    stats.seconds = time.perf_counter() - start
    return out, stats


def budget_batches(
    lengths: np.ndarray, positions: np.ndarray, budget: TokenBudget
) -> Iterator[np.ndarray]:
    """Token-budget batches of ``positions``, longest first, each cut with the budget
    current when it is cut (it may shrink after an OOM while earlier batches run)."""
    order = positions[np.argsort(-lengths[positions], kind="stable")]
    start = 0
    while start < len(order):
        rest = order[start:]
        first = token_budget_batches(lengths[rest], budget.current)[0]
        yield rest[first]
        start += len(first)


# -- running batches: OOM halving, then fp32 for non-finite rows ----------------------------
def _run_batches(
    batches: Iterable[np.ndarray],
    prepare: Callable[[np.ndarray], Prepared],
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    lengths: np.ndarray,
    out: np.ndarray,
    stats: StageStats,
    *,
    model_name: str,
    device: torch.device,
    prefetch: bool,
    budget: TokenBudget,
) -> dict[int, str]:
    """Run every batch; on OOM halve the batch and the budget; write pooled rows into
    ``out``. Returns the positions that did not fit alone, with the error."""
    on_device: list[tuple[np.ndarray, torch.Tensor]] = []
    too_large: dict[int, str] = {}

    def run(prepared: Prepared) -> None:
        pending = [prepared]
        while pending:
            item = pending.pop()
            idx = item.idx
            padded = int(lengths[idx].max()) * len(idx)
            if len(idx) > 1 and padded > budget.current:
                # Cut (or prefetched) before the budget last shrank: cut it to fit now,
                # rather than running into the same OOM again.
                item = None
                pieces = token_budget_batches(lengths[idx], budget.current)
                pending.extend(prepare(idx[p]) for p in reversed(pieces))
                continue
            try:
                pooled = forward(use(item, device))
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not is_oom(exc):
                    raise
                detail = (str(exc).splitlines() or ["out of memory"])[0]
            else:
                budget.succeeded()
                stats.batches += 1
                stats.real_tokens += int(lengths[idx].sum())
                stats.padded_tokens += padded
                if device.type == "cuda":
                    on_device.append((idx, pooled))
                else:
                    out[idx] = pooled.numpy()
                continue
            # Outside the except block: the failed forward's frames are released now.
            item = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            budget.out_of_memory(padded)
            if len(idx) == 1:
                too_large[int(idx[0])] = detail
                logger.warning(
                    "%s: a sequence of %d tokens does not fit in memory alone",
                    model_name,
                    int(lengths[idx[0]]),
                )
                continue
            stats.oom_splits += 1
            logger.warning(
                "%s: out of memory on a batch of %d (%d tokens); retrying in "
                "halves, budget now %d tokens",
                model_name,
                len(idx),
                padded,
                budget.current,
            )
            half = len(idx) // 2
            pending.extend([prepare(idx[half:]), prepare(idx[:half])])

    with contextlib.closing(prefetched(batches, prepare, stats, enabled=prefetch)) as ready:
        for prepared in ready:
            run(prepared)
    if on_device:
        rows = np.concatenate([idx for idx, _ in on_device])
        out[rows] = torch.cat([p for _, p in on_device]).cpu().numpy()
    return too_large


def _finish(
    adapter: ModelAdapter,
    out: np.ndarray,
    stats: StageStats,
    too_large: dict[int, str],
    recompute: Callable[[np.ndarray], dict[int, str]],
) -> None:
    """Non-finite rows of a half-precision model computed again in fp32; raise for the
    sequences that did not fit or stayed non-finite, with the finished rows."""
    done = np.ones(len(out), dtype=bool)
    done[list(too_large)] = False
    bad = np.flatnonzero(done & ~np.isfinite(out).all(axis=1))
    model, model_name = adapter.model, adapter.name
    dtype = parameter_dtype(model)
    if len(bad) and dtype in (torch.float16, torch.bfloat16):
        logger.warning(
            "%s: %d sequence(s) gave a non-finite embedding in %s; computing them again in fp32",
            model_name,
            len(bad),
            dtype,
        )
        stats.recomputed_fp32 += len(bad)
        with computing_in_fp32(model):
            too_large.update(recompute(bad))
        done[list(too_large)] = False
        bad = np.flatnonzero(done & ~np.isfinite(out).all(axis=1))
    if too_large:
        first = min(too_large)
        exc: PartialResult = SequenceTooLarge(
            first, model_name, too_large[first], indices=sorted(too_large)
        )
        done[bad] = False
        exc.keep(out, done, stats)
        raise exc
    if len(bad):
        exc = NonFiniteEmbedding(bad.tolist(), model_name, dtype)
        done[bad] = False
        exc.keep(out, done, stats)
        raise exc
