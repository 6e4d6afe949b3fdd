"""Per-ORF embeddings: padded, masked, length-sorted batches through each model.

Pooling reproduces the original exactly:

- DNABERT-S: mean of the last hidden state over *all* tokens of the sequence,
  ``[CLS]`` and ``[SEP]`` included (the original embeds one unpadded sequence
  per call and averages every position); padding is masked out here.
- ESM-2: mean of the last layer over residue positions ``1..len`` (no BOS/EOS),
  capped at the first 1024 residues as the original's ``truncation_seq_length``
  does for the average (its tokens themselves are not truncated).

Batches (:mod:`.batching`) hold at most ``toks_per_batch`` padded tokens; ``None``
derives the budget from the device: free memory on a GPU
(:func:`device_token_budget`), a fixed budget on the CPU.

Overlap: a prefetch thread prepares the next batches while the current one runs
— it tokenises DNABERT-S input (in slices, longest first, so the first batch
starts after one slice), pads, and on CUDA pins the batch and copies it to the
device on a side stream. On CUDA the pooled results stay on the device until
the end of the call, so the host never waits for a batch to finish and keeps
the GPU's queue full.

A batch that runs out of device memory is split in halves and retried, down to
one sequence, and the model's :class:`.batching.TokenBudget` (kept by the worker
across partitions) is halved, so that later batches are cut to fit instead of each
failing first; it grows back after batches that run. A single sequence that still
does not fit is left out; once every other batch has run, :class:`SequenceTooLarge`
names it and carries the finished rows, which the partition keeps. A non-finite
embedding (fp16 overflow) is computed again with the model computing in fp32
(:func:`.precision.computing_in_fp32`); one still non-finite raises
:class:`NonFiniteEmbedding`, again with the finished rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from virnuc_dask.core.batching import TokenBudget, budget_from_memory, token_budget_batches
from virnuc_dask.worker.precision import computing_in_fp32, parameter_dtype

logger = logging.getLogger(__name__)

ESM_MEAN_MAX_RESIDUES = 1024
# CPU budgets: on 2 AVX-512 cores with the bench models (ESM-2 6 x 320, DNABERT-S 2 x 256)
# throughput was flat from 2048 to 16384 tokens (within the noise of a shared machine);
# these are at the fast end and keep batches, hence padding, small.
CPU_TOKS_PER_BATCH = {"esm": 2048, "dnabert": 4096}
DNABERT_TOKENIZE_SLICE = 512
PREFETCH_DEPTH = 2


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


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    return parameter_dtype(model)


def esm_bytes_per_token(model: torch.nn.Module, longest: int) -> int:
    """Activation bytes one token needs in an ESM-2 forward (peak inside a layer).

    About 16 hidden-size vectors live at once (residual, normed input, q/k/v and
    their rotations, attention output, the 4x MLP activation and its GELU), plus a
    float32 row of attention scores per head when SDPA takes its non-fused path.
    """
    elem = torch.finfo(_param_dtype(model)).bits // 8
    heads = getattr(model, "attention_heads", getattr(model, "heads", 1))
    return elem * 16 * model.embed_dim + 4 * heads * longest + 4 * model.embed_dim


def dnabert_bytes_per_token(model: torch.nn.Module, longest: int) -> int:
    """Activation bytes one token needs in a DNABERT-S forward: about 24 hidden-size
    vectors (gated MLP of 2 x 4 x hidden) plus its materialised ALiBi/padding bias row
    per head."""
    cfg = model.config
    elem = torch.finfo(_param_dtype(model)).bits // 8
    return elem * (24 * cfg.hidden_size + cfg.num_attention_heads * longest) + 4 * cfg.hidden_size


# -- batch preparation, overlapped with the forward ------------------------------------------


@dataclasses.dataclass
class _Prepared:
    idx: np.ndarray
    tensors: dict[str, torch.Tensor]
    ready: Any = None  # a CUDA event recorded after the copy, or None


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _prefetched(
    items: Iterable[np.ndarray],
    prepare: Callable[[np.ndarray], _Prepared],
    stats: StageStats,
    *,
    enabled: bool,
) -> Iterator[_Prepared]:
    """``prepare(idx)`` for every batch of ``items``, in a background thread when enabled."""
    if not enabled:
        for idx in items:
            t = time.perf_counter()
            prepared = prepare(idx)
            stats.prepare_seconds += time.perf_counter() - t
            yield prepared
        return
    q: queue.Queue = queue.Queue(maxsize=PREFETCH_DEPTH)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for idx in items:
                t = time.perf_counter()
                prepared = prepare(idx)
                stats.prepare_seconds += time.perf_counter() - t
                if not put(prepared):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
            put(_Failed(exc))
            return
        put(done)

    thread = threading.Thread(target=produce, name="virnuc-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            t = time.perf_counter()
            item = q.get()
            stats.wait_seconds += time.perf_counter() - t
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


def _to_device(
    host: dict[str, torch.Tensor], device: torch.device, idx: np.ndarray, side_stream: Any
) -> _Prepared:
    """Host tensors onto ``device``: pinned and copied on a side stream on CUDA."""
    if device.type != "cuda":
        return _Prepared(idx, host)
    with torch.cuda.stream(side_stream):
        tensors = {k: v.pin_memory().to(device, non_blocking=True) for k, v in host.items()}
        ready = torch.cuda.Event()
        ready.record(side_stream)
    return _Prepared(idx, tensors, ready)


def _use(prepared: _Prepared, device: torch.device) -> dict[str, torch.Tensor]:
    """Make the compute stream wait for ``prepared``'s copy and own its memory."""
    if prepared.ready is not None:
        stream = torch.cuda.current_stream(device)
        stream.wait_event(prepared.ready)
        for tensor in prepared.tensors.values():
            tensor.record_stream(stream)
    return prepared.tensors


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


def _run_batches(
    batches: Iterable[np.ndarray],
    prepare: Callable[[np.ndarray], _Prepared],
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

    def run(prepared: _Prepared) -> None:
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
                pooled = forward(_use(item, device))
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

    with contextlib.closing(_prefetched(batches, prepare, stats, enabled=prefetch)) as ready:
        for prepared in ready:
            run(prepared)
    if on_device:
        rows = np.concatenate([idx for idx, _ in on_device])
        out[rows] = torch.cat([p for _, p in on_device]).cpu().numpy()
    return too_large


def _finish(
    model: torch.nn.Module,
    model_name: str,
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
    dtype = _param_dtype(model)
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


def _pad(token_lists: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    for row, toks in enumerate(token_lists):
        ids[row, : len(toks)] = torch.as_tensor(toks, dtype=torch.long)
    return ids


def _side_stream(device: torch.device) -> Any:
    return torch.cuda.Stream(device) if device.type == "cuda" else None


# -- ESM-2 ---------------------------------------------------------------------------------


def esm_tokens(alphabet: object, proteins: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each protein, as ``alphabet.encode`` gives them for one-letter residues.

    A byte lookup table instead of fair-esm's per-sequence regex split (which dominated
    CPU time); proteins from six-frame translation never contain ``<...>`` tokens.
    """
    table = np.full(256, alphabet.unk_idx, dtype=np.int64)
    for tok, idx in alphabet.tok_to_idx.items():
        if len(tok) == 1 and ord(tok) < 256:
            table[ord(tok)] = idx
    return [table[np.frombuffer(p.encode("latin-1"), dtype=np.uint8)] for p in proteins]


@torch.inference_mode()
def embed_esm(
    model: torch.nn.Module,
    alphabet: object,
    proteins: Sequence[str],
    *,
    toks_per_batch: int | None = None,
    device: torch.device | str = "cpu",
    prefetch: bool = True,
    budget: TokenBudget | None = None,
) -> tuple[np.ndarray, StageStats]:
    """ESM-2 mean embeddings ``[len(proteins), embed_dim]`` (float32), rows in input order.

    ``model`` is fair-esm's ESM2 or an :class:`.esm_fast.SdpaEsm2` (same call).
    ``budget``: the worker's learned budget for this model (a fresh one by default);
    ``toks_per_batch`` (or the device's free memory) is its ceiling.
    """
    device = torch.device(device)
    stats = StageStats(sequences=len(proteins))
    start = time.perf_counter()
    out = np.zeros((len(proteins), model.embed_dim), dtype=np.float32)
    if not proteins:
        return out, stats
    tokens = esm_tokens(alphabet, proteins)
    bos, eos, pad = alphabet.cls_idx, alphabet.eos_idx, alphabet.padding_idx
    lengths = np.array([len(t) + 2 for t in tokens], dtype=np.int64)
    if toks_per_batch is None:
        toks_per_batch = device_token_budget(
            device,
            bytes_per_token=esm_bytes_per_token(model, int(lengths.max())),
            cpu_default=CPU_TOKS_PER_BATCH["esm"],
        )
    budget = budget or TokenBudget()
    budget.start(toks_per_batch)
    layer = model.num_layers
    side = _side_stream(device)

    def prepare(idx: np.ndarray) -> _Prepared:
        ids = _pad([np.concatenate(([bos], tokens[i], [eos])) for i in idx], pad)
        residues = torch.as_tensor(np.minimum(lengths[idx] - 2, ESM_MEAN_MAX_RESIDUES))
        return _to_device({"ids": ids, "residues": residues}, device, idx, side)

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rep = model(batch["ids"], repr_layers=[layer])["representations"][layer]
        n = batch["residues"]
        pos = torch.arange(rep.shape[1], device=rep.device)
        keep = (pos[None, :] >= 1) & (pos[None, :] <= n[:, None])
        # where, not a product with the mask: a NaN at a padded position (NaN x 0 = NaN)
        # must not reach the real rows' sum.
        summed = torch.where(keep[..., None], rep.float(), 0.0).sum(dim=1)
        return summed / n[:, None]

    def run(positions: np.ndarray, *, prefetch: bool) -> dict[int, str]:
        return _run_batches(
            budget_batches(lengths, positions, budget),
            prepare,
            forward,
            lengths,
            out,
            stats,
            model_name="ESM-2",
            device=device,
            prefetch=prefetch,
            budget=budget,
        )

    too_large = run(np.arange(len(proteins)), prefetch=prefetch)
    _finish(model, "ESM-2", out, stats, too_large, lambda bad: run(bad, prefetch=False))
    stats.seconds = time.perf_counter() - start
    return out, stats


# -- DNABERT-S -----------------------------------------------------------------------------


@torch.inference_mode()
def embed_dnabert(
    model: torch.nn.Module,
    tokenizer: object,
    sequences: Sequence[str],
    *,
    toks_per_batch: int | None = None,
    device: torch.device | str = "cpu",
    prefetch: bool = True,
    budget: TokenBudget | None = None,
) -> tuple[np.ndarray, StageStats]:
    """DNABERT-S mean embeddings ``[len(sequences), hidden_size]`` (float32), input order.

    Tokenising happens in slices of the sequences sorted by length, longest first,
    each slice cut into token-budget batches; with ``prefetch`` this runs beside the
    forward of the previous batches.
    """
    from virnuc_dask.models.dnabert import mean_pool_all_tokens

    device = torch.device(device)
    stats = StageStats(sequences=len(sequences))
    start = time.perf_counter()
    out = np.zeros((len(sequences), model.hidden_size), dtype=np.float32)
    if not sequences:
        return out, stats
    # Token counts are known once a slice is tokenised; until then, the upper bound
    # "one token per base + [CLS]/[SEP]" sizes the memory-derived budget.
    tokens: list[list[int] | None] = [None] * len(sequences)
    lengths = np.zeros(len(sequences), dtype=np.int64)
    nt_lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if toks_per_batch is None:
        toks_per_batch = device_token_budget(
            device,
            bytes_per_token=dnabert_bytes_per_token(model, int(nt_lengths.max()) + 2),
            cpu_default=CPU_TOKS_PER_BATCH["dnabert"],
        )
    budget = budget or TokenBudget()
    budget.start(toks_per_batch)
    side = _side_stream(device)

    def batches() -> Iterator[np.ndarray]:
        order = np.argsort(-nt_lengths, kind="stable")
        for lo in range(0, len(order), DNABERT_TOKENIZE_SLICE):
            part = order[lo : lo + DNABERT_TOKENIZE_SLICE]
            for i, ids in zip(part, tokenizer.encode([sequences[i] for i in part]), strict=True):
                tokens[i] = ids
                lengths[i] = len(ids)
            yield from budget_batches(lengths, part, budget)

    def prepare(idx: np.ndarray) -> _Prepared:
        ids = _pad([tokens[i] for i in idx], tokenizer.pad_id)
        mask = _mask_from_lengths(lengths[idx], ids.shape[1])
        return _to_device({"ids": ids, "mask": mask}, device, idx, side)

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = model(batch["ids"], batch["mask"])
        return mean_pool_all_tokens(hidden, batch["mask"])

    def rerun(bad: np.ndarray) -> dict[int, str]:
        return _run_batches(
            budget_batches(lengths, bad, budget),
            prepare,
            forward,
            lengths,
            out,
            stats,
            model_name="DNABERT-S",
            device=device,
            prefetch=False,
            budget=budget,
        )

    too_large = _run_batches(
        batches(),
        prepare,
        forward,
        lengths,
        out,
        stats,
        model_name="DNABERT-S",
        device=device,
        prefetch=prefetch,
        budget=budget,
    )
    _finish(model, "DNABERT-S", out, stats, too_large, rerun)
    stats.seconds = time.perf_counter() - start
    return out, stats


def _mask_from_lengths(lengths: np.ndarray, width: int) -> torch.Tensor:
    # From lengths, not from `ids != pad`: a real token may share the padding id.
    return torch.arange(width)[None, :] < torch.as_tensor(lengths)[:, None]
