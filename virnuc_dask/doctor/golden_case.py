"""The golden case of ``virnuc-dask doctor``: a packaged input, the digests of the
demonstration models and the scores ``predict`` gives for them in fp32; how it is made,
and the check that one partition through ``predict`` on a cluster gives those scores."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from importlib import resources
from pathlib import Path

import numpy as np

from virnuc_dask.doctor.check_result import Check

GOLDEN = "golden"  # package data directory beside this module
GOLDEN_READS = 24
SCORE_TOLERANCE = 1e-5


def golden_dir() -> Path:
    return Path(str(resources.files("virnuc_dask.doctor") / GOLDEN))


def model_digests(paths: dict[str, Path]) -> dict[str, str]:
    """SHA-256 of each model's tensors (names, shapes, bytes), independent of file layout."""
    import torch

    from virnuc_dask.models.classifier import load_classifier
    from virnuc_dask.models.registry import EMBEDDING_MODELS

    models = {
        **{m.key: m.load_module(str(paths[m.key])) for m in EMBEDDING_MODELS},
        "classifier": load_classifier(str(paths["classifier"])),
    }
    out = {}
    for name, model in models.items():
        digest = hashlib.sha256()
        for key, tensor in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        out[name] = digest.hexdigest()
    return out


def write_golden(directory: Path, work: Path, client) -> None:
    """Make the golden case: the packaged input, the demonstration models' digests and the
    scores ``predict`` gives in fp32. Run once by the project; the result is package data."""
    from virnuc_dask.models.demo import build_demo, example_reads, write_fasta

    directory.mkdir(parents=True, exist_ok=True)
    write_fasta(directory / "input.fa", example_reads(GOLDEN_READS, max_length=600))
    paths = build_demo(work)
    result = _predict(directory / "input.fa", paths, work / "out", client)
    shutil.copy(result / "prediction_results.txt", directory / "prediction_results.txt")
    (directory / "models.json").write_text(json.dumps(model_digests(paths), indent=2) + "\n")


def _predict(fasta: Path, paths: dict[str, Path], out: Path, client) -> Path:
    from virnuc_dask.config import load_settings
    from virnuc_dask.dataflow.pipeline import predict
    from virnuc_dask.models.registry import EMBEDDING_MODELS

    settings = load_settings(
        inputs=[str(fasta)],
        overrides={
            "out": str(out),
            "length": 300,
            **{m.source_setting: str(paths[m.key]) for m in EMBEDDING_MODELS},
            "classifier": str(paths["classifier"]),
            "precision": "fp32",
            "offline": True,
            "overwrite": True,
            "partition_rows": 4096,
        },
    )
    predict(settings, client)
    return out


def _scores(path: Path) -> tuple[list[str], np.ndarray]:
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return [f"{r[0]}\t{r[1]}" for r in rows], np.array([[float(r[2]), float(r[3])] for r in rows])


def check_predict(client, work: Path, *, gpus: bool) -> Check:
    """One partition through ``predict`` on ``client``'s cluster, against the golden case."""
    from virnuc_dask.models.demo import build_demo

    golden = golden_dir()
    paths = build_demo(work / "demo")
    expected_models = json.loads((golden / "models.json").read_text())
    if model_digests(paths) != expected_models:
        return Check(
            "predict",
            False,
            "the demonstration models built here differ from "
            "those of the golden case (a different torch build?)",
        )
    t = time.perf_counter()
    out = _predict(golden / "input.fa", paths, work / "predict", client)
    seconds = time.perf_counter() - t
    summary = json.loads((out / "run_summary.json").read_text())
    labels, scores = _scores(out / "prediction_results.txt")
    want_labels, want = _scores(golden / "prediction_results.txt")
    diff = float(np.abs(scores - want).max()) if scores.shape == want.shape else float("inf")
    workers = {
        a: {k: w.get(k) for k in ("device", "precision", "device_name", "tf32")}
        for a, w in summary["workers"].items()
        if "device" in w
    }
    wrong = [
        f"{a}: {w['device']} {w['precision']}"
        for a, w in workers.items()
        if w["precision"] != "fp32" or w["device"].startswith("cuda") != gpus
    ]
    tf32_on = [a for a, w in workers.items() if not (w["tf32"] or {}).get("tf32_off")]
    ok = (
        labels == want_labels
        and diff <= SCORE_TOLERANCE
        and not wrong
        and not tf32_on
        and workers
        and not summary["workers_failed"]
    )
    text = (
        f"{len(labels)} ORFs, max score difference {diff:.1e} from the golden case "
        f"(at most {SCORE_TOLERANCE:.0e}), {len(workers)} worker(s) on "
        f"{', '.join(sorted({w['device'] for w in workers.values()})) or 'none'} in fp32, "
        f"TF32 {'on at ' + ', '.join(tf32_on) if tf32_on else 'off'}; {seconds:.1f} s"
    )
    if wrong:
        text += f"; not as started: {'; '.join(wrong)}"
    if summary["workers_failed"]:
        text += "; failed: " + "; ".join(f["error"] for f in summary["workers_failed"])
    return Check(
        "predict",
        bool(ok),
        text,
        {"max_score_diff": diff, "workers": workers, "workers_failed": summary["workers_failed"]},
    )
