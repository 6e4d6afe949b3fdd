"""Peak host memory of loading ESM-2, against the checkpoint's size.

    python benchmarks/load_rss.py --esm 33x1280x20 [--esm 36x2560x40:meta] [--ways meta,copy]
        [--dir DIR] [--json out.json]

For each layout (layers x width x heads, optionally ``:WAYS`` to limit the ways for
that layout) a checkpoint in fair-esm's format is written with random weights (built
on the meta device, each tensor filled in place in a file-backed buffer, so that
writing it does not hold the model in memory), then each way of loading runs in a
fresh process, which reports its peak resident set size above what it held before
loading (``ru_maxrss``) and, sampled every 5 ms from ``/proc/self/status``, the
peaks of its anonymous memory (``RssAnon``: what only this process holds) and of its
file-backed pages (``RssFile``: the memory-mapped checkpoint, page cache the kernel
may drop and read again):

- ``meta``: :func:`virnuc_dask.models.esm2.load_esm` (the model built on the meta
  device, the memory-mapped checkpoint's tensors assigned);
- ``copy``: fair-esm's own ``load_model_and_alphabet_core`` on the same
  memory-mapped data (a model of random fp32 weights built first, the checkpoint
  copied into it).

After loading, every weight is read once (what a forward or the copy to a GPU does),
so that pages of a memory-mapped checkpoint count too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def write_checkpoint(path: Path, layers: int, dim: int, heads: int) -> Path:
    """A fair-esm checkpoint of random weights, built without holding it in anonymous
    memory."""
    import esm
    import torch
    from esm.model.esm2 import ESM2

    with torch.device("meta"):
        model = ESM2(layers, dim, heads, esm.Alphabet.from_architecture("ESM-1b"))
    backing = path.parent / f"{path.stem}-tensors"
    backing.mkdir(exist_ok=True)
    state = {}
    for n, (key, value) in enumerate(model.state_dict().items()):
        if key.startswith("contact_head"):
            continue
        prefix = "encoder." if key.startswith("lm_head") else "encoder.sentence_encoder."
        file = backing / str(n)
        file.touch()
        tensor = torch.from_file(str(file), shared=True, size=value.numel(), dtype=value.dtype)
        if tensor.is_floating_point():
            tensor.normal_(0.0, 0.02)
        state[prefix + key] = tensor.view(value.shape)
    cfg = argparse.Namespace(
        encoder_layers=layers,
        encoder_embed_dim=dim,
        encoder_attention_heads=heads,
        token_dropout=True,
    )
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    regression = {
        k: torch.zeros(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith("contact_head")
    }
    torch.save({"model": regression}, path.with_name(path.stem + "-contact-regression.pt"))
    for file in backing.iterdir():
        file.unlink()
    backing.rmdir()
    return path


def status_bytes() -> dict[str, int]:
    """``RssAnon``, ``RssFile`` and ``VmRSS`` of this process now, in bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out


class Sampler(threading.Thread):
    """The largest ``RssAnon``/``RssFile``/``VmRSS`` seen, every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peaks = status_bytes()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for key, value in status_bytes().items():
                self.peaks[key] = max(self.peaks[key], value)
            time.sleep(self.interval)

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.join()
        for key, value in status_bytes().items():
            self.peaks[key] = max(self.peaks[key], value)
        return self.peaks


def child(path: str, way: str) -> dict[str, float]:
    import torch
    from esm import pretrained  # imported before measuring: code, not the load

    import virnuc_dask.models.esm_fast  # noqa: F401 - likewise
    from virnuc_dask.models.esm2 import load_esm, read_checkpoint

    start = status_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = Sampler()
    sampler.start()
    t = time.perf_counter()
    if way == "meta":
        model, _ = load_esm(path)
    else:
        model, _ = pretrained.load_model_and_alphabet_core(
            Path(path).stem, read_checkpoint(Path(path)), None
        )
    with torch.no_grad():
        touched = sum(float(p.sum()) for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peaks = sampler.stop()
    after = status_bytes()
    return {
        "peak_anon_bytes": peaks["RssAnon"] - start["RssAnon"],
        "peak_file_bytes": peaks["RssFile"] - start["RssFile"],
        "anon_after_bytes": after["RssAnon"] - start["RssAnon"],
        "file_after_bytes": after["RssFile"] - start["RssFile"],
        "peak_rss_bytes": peak - before,
        "seconds": time.perf_counter() - t,
        "weights_sum": touched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--esm", action="append", help="layers x width x heads (repeatable)")
    parser.add_argument("--ways", default="meta,copy")
    parser.add_argument("--dir", help="where checkpoints are written (default: a temp dir)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    base = Path(args.dir or tempfile.mkdtemp(prefix="load-rss-"))
    base.mkdir(parents=True, exist_ok=True)
    results = []
    for given in args.esm or ["33x1280x20"]:
        layout, _, ways = given.partition(":")
        layers, dim, heads = (int(x) for x in layout.split("x"))
        path = write_checkpoint(base / f"esm2_t{layers}_{dim}_zeros.pt", layers, dim, heads)
        size = path.stat().st_size
        for way in (ways or args.ways).split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path), way],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            ).stdout
            row = {"layout": layout, "way": way, "checkpoint_bytes": size, **json.loads(out)}
            row["peak_over_checkpoint"] = row["peak_rss_bytes"] / size
            results.append(row)
            print(
                f"{layout:>12} {way:>5}: checkpoint {size / 2**30:6.2f} GiB, peak RSS of the "
                f"load {row['peak_rss_bytes'] / 2**30:6.2f} GiB "
                f"({row['peak_over_checkpoint']:.2f}x; anonymous peak "
                f"{row['peak_anon_bytes'] / 2**30:.2f} GiB, file pages peak "
                f"{row['peak_file_bytes'] / 2**30:.2f} GiB), {row['seconds']:.1f} s"
            )
        path.unlink()
        path.with_name(path.stem + "-contact-regression.pt").unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
