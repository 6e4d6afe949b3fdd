"""Bad input through the command line: a defined exit code, one clear line, no traceback,
and an output directory that holds either the earlier results untouched or a clean run.

Exit 1 (the run cannot start or must stop; nothing in ``--out`` changes, even with
``--overwrite``): missing or unreadable input, not FASTA, binary data, truncated gzip,
an unwritable or full output directory, an unusable or mismatched model file.
Exit 2 (the bad records are skipped and listed in ``failed_records.tsv``): an empty
input file, records with an empty sequence, duplicate ids, characters that are not
IUPAC nucleotide codes, a header-only file. Exit 0: Windows line endings, a 1 Mbp
read, reads too short for an ORF, an input without any ORF.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import logging
import os
import random
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from distributed import LocalCluster
from helpers import REFERENCE, TINY, predict_command

from virnuc_dask.cli.main import main

BASIC = REFERENCE / "dev" / "basic" / "input.fa"
RESULTS = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "read_predictions.tsv",
    "failed_records.tsv",
)


@dataclasses.dataclass
class Ran:
    returncode: int
    stderr: str


def run_cli(
    inputs,
    out: Path,
    *extra: str,
    scheduler: str | None = None,
    limit_file_size: int | None = None,
    **models: str,
) -> Ran:
    """``virnuc-dask predict`` on ``inputs``: in this process on ``scheduler``'s cluster,
    or (with a file size limit, or without a scheduler) as a process of its own."""
    command = [
        *predict_command(*inputs, **models),
        "--out",
        str(out),
        "--partition-rows",
        "37",
        *extra,
    ]
    if scheduler is not None and limit_file_size is None:
        # The worker runs in this process: its own log ("Compute Failed" for the task
        # that raised) would be in its process's log, not on the command's stderr.
        worker_log = logging.getLogger("distributed.worker")
        level, worker_log.level = worker_log.level, logging.CRITICAL
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                code = main([*command[3:], "--scheduler", scheduler])
        finally:
            worker_log.setLevel(level)
        return Ran(code, stderr.getvalue())

    def limit() -> None:  # Python ignores SIGXFSZ: writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit if limit_file_size else None,
    )
    return Ran(proc.returncode, proc.stderr)


@pytest.fixture(scope="module")
def scheduler():
    """An in-process cluster shared by the runs (a worker that fails to load the models
    closes itself: runs with a broken model start a cluster of their own)."""
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def run(scheduler):
    """:func:`run_cli` on the shared cluster."""

    def run(inputs, out: Path, *extra: str, **options) -> Ran:
        shared = None if set(options) & {"esm_model", "dnabert_model", "classifier"} else scheduler
        return run_cli(inputs, out, *extra, scheduler=shared, **options)

    return run


def error_lines(stderr: str) -> list[str]:
    """Every line logged at ERROR, by the tool or by Dask."""
    return [line for line in stderr.splitlines() if " ERROR " in line]


def tool_errors(stderr: str) -> list[str]:
    """The tool's own error lines (Dask may log one of its own as a worker that failed to
    load its models closes on a loaded machine: that is not the tool's verdict)."""
    return [
        line for line in stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d ERROR virnuc_dask", line)
    ]


def assert_fails_cleanly(proc: Ran, *fragments: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = tool_errors(proc.stderr)
    assert len(errors) == 1, proc.stderr
    (line,) = errors
    for fragment in fragments:
        assert fragment in line, line


def digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def previous(tmp_path_factory, run) -> tuple[Path, dict[str, str]]:
    """An output directory holding a complete earlier run (of dev/basic)."""
    out = tmp_path_factory.mktemp("previous")
    proc = run([BASIC], out)
    assert proc.returncode == 0, proc.stderr
    return out, digests(out)


# -- inputs and models that stop a run ------------------------------------------------------


def truncated_gzip(tmp: Path, copies: int) -> Path:
    data = gzip.compress(BASIC.read_bytes() * copies)
    path = tmp / f"reads{copies}.fa.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def truncated(source: str, tmp: Path, name: str, keep: int) -> Path:
    path = tmp / name
    path.write_bytes(Path(source).read_bytes()[:keep])
    return path


def corrupt_esm(tmp: Path) -> dict[str, str]:
    source = Path(TINY["esm_model"])
    target = truncated(str(source), tmp, source.name, 20_000)
    regression = source.stem + "-contact-regression.pt"
    (tmp / regression).write_bytes((source.parent / regression).read_bytes())
    return {"esm_model": str(target)}


def corrupt_dnabert(tmp: Path) -> dict[str, str]:
    target = tmp / "dnabert"
    shutil.copytree(TINY["dnabert_model"], target)
    weights = target / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:30_000])
    return {"dnabert_model": str(target)}


def narrow_classifier(tmp: Path) -> dict[str, str]:
    from virnuc_dask.models.classifier import MLPClassifier

    path = tmp / "classifier_100.pth"
    torch.save(MLPClassifier(100, 32, 2).state_dict(), path)
    return {"classifier": str(path)}


def binary_file(tmp: Path) -> Path:
    path = tmp / "garbage.bin"
    path.write_bytes(random.Random(1).randbytes(3000).replace(b">", b"<"))
    return path


def binary_after_header(tmp: Path) -> Path:
    path = tmp / "garbage.fa"
    path.write_bytes(b">r1\nACGT\n>r2 fine\nACGT\nAC\x00\x01GT\n")
    return path


def not_fasta(tmp: Path) -> Path:
    path = tmp / "reads.txt"
    path.write_text("read_id\tsequence\nr1\tACGT\n")
    return path


def bad_fastq(tmp: Path, name: str, tail: str, *, compressed: bool = False) -> Path:
    text = "@r1 first\nACGTACGT\n+\nIIIIIIII\n" * 3 + tail
    path = tmp / name
    path.write_bytes(gzip.compress(text.encode()) if compressed else text.encode())
    return path


STOPPERS = {
    "FASTQ quality length": (
        lambda tmp: ([BASIC, bad_fastq(tmp, "q.fq", "@r4\nACGT\n+\nIII\n")], {}),
        ["q.fq: line 16: record 'r4': sequence and quality lengths differ"],
    ),
    "FASTQ without '+'": (
        lambda tmp: (
            [bad_fastq(tmp, "p.fq.gz", "@r4\nACGT\nACGT\n+\nIIIIIIII\n", compressed=True)],
            {},
        ),
        ["p.fq.gz: line 15: record 'r4': missing '+' line"],
    ),
    "FASTQ truncated": (
        lambda tmp: ([bad_fastq(tmp, "t.fq", "@r4\nACGT\n")], {}),
        ["t.fq: line 13: record 'r4': truncated record"],
    ),
    "FASTA record in FASTQ": (
        lambda tmp: ([bad_fastq(tmp, "f.fq", ">r4\nACGT\n")], {}),
        ["f.fq: line 13: record 'r4': a FASTA record ('>' header) in a FASTQ file"],
    ),
    # name: (inputs and models from tmp, fragments of the one error line)
    "missing input": (lambda tmp: ([tmp / "nope.fa"], {}), ["nope.fa", "not found"]),
    "not FASTA": (
        lambda tmp: ([not_fasta(tmp)], {}),
        ["reads.txt: line 1: not FASTA: expected a '>' header line", "read_id"],
    ),
    "binary garbage": (lambda tmp: ([binary_file(tmp)], {}), ["garbage.bin", "not FASTA"]),
    "binary after a header": (
        lambda tmp: ([BASIC, binary_after_header(tmp)], {}),
        ["garbage.fa: line 5: record 'r2': binary data (NUL byte)"],
    ),
    "truncated gzip": (
        lambda tmp: ([truncated_gzip(tmp, 1)], {}),
        ["reads1.fa.gz", "corrupt or truncated gzip data"],
    ),
    "truncated gzip, found while reading": (
        lambda tmp: ([truncated_gzip(tmp, 4)], {}),
        ["reads4.fa.gz: line ", "corrupt or truncated gzip data"],
    ),
    "classifier width": (
        lambda tmp: ([BASIC], narrow_classifier(tmp)),
        ["classifier expects 100 features", "give 128"],
    ),
    "corrupt classifier": (
        lambda tmp: (
            [BASIC],
            {"classifier": str(truncated(TINY["classifier"], tmp, "mlp.pth", 3000))},
        ),
        ["mlp.pth: not a loadable VirNucPro classifier"],
    ),
    "corrupt ESM-2": (
        lambda tmp: ([BASIC], corrupt_esm(tmp)),
        ["esm2_t2_64_tiny.pt: not a loadable fair-esm ESM-2 checkpoint"],
    ),
    "corrupt DNABERT-S": (
        lambda tmp: ([BASIC], corrupt_dnabert(tmp)),
        ["cannot read DNABERT-S weights", "pytorch_model.bin"],
    ),
}


@pytest.mark.parametrize("case", sorted(STOPPERS))
def test_bad_input_stops_the_run_and_keeps_earlier_results(previous, tmp_path, case, run):
    out, before = previous
    make, fragments = STOPPERS[case]
    inputs, models = make(tmp_path)
    proc = run(inputs, out, "--overwrite", **models)
    assert_fails_cleanly(proc, *fragments)
    assert digests(out) == before


def test_unwritable_output_directory(tmp_path, run):
    parent = tmp_path / "locked"
    parent.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: use a read-only filesystem
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(parent)], capture_output=True
        )
        if mounted.returncode:
            pytest.skip("running as root without a way to mount a read-only filesystem")
    else:
        parent.chmod(0o555)
    try:
        proc = run([BASIC], parent / "out")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(parent)], check=True)
        else:
            parent.chmod(0o755)
    assert_fails_cleanly(proc, str(parent / "out"), "cannot write in the output directory")


# -- a full output directory ------------------------------------------------------------------


def fill(path: Path, leave: int) -> None:
    """Fill the filesystem of ``path`` up to ``leave`` free bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(path, max(0, path.stat().st_size - leave))


@pytest.fixture
def small_filesystem(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_full_filesystem(previous, small_filesystem, run):
    """ENOSPC while embedding, then while writing the results of a finished run."""
    expected, _ = previous
    out, filler = small_filesystem / "out", small_filesystem / "filler"
    fill(filler, leave=48 * 1024)
    proc = run([BASIC], out)
    assert_fails_cleanly(proc, str(out), "No space left on device")
    filler.unlink()
    proc = run([BASIC], out)  # space again: resumes, ends as an uninterrupted run
    assert proc.returncode == 0, proc.stderr
    for name in RESULTS:
        assert (out / name).read_bytes() == (expected / name).read_bytes()

    before = digests(out)
    fill(filler, leave=8 * 1024)
    proc = run([BASIC], out)
    assert_fails_cleanly(proc, str(out), "No space left on device")
    assert digests(out) == before


@pytest.mark.slow
def test_file_size_limit(previous, tmp_path, run):
    """EFBIG (ulimit -f) while writing the ORF tables beside the store, then while writing
    the results of a finished run."""
    expected, _ = previous
    out = tmp_path / "out"
    proc = run_cli([BASIC], out, limit_file_size=8192)
    assert_fails_cleanly(proc, str(out / ".scratch"), "File too large")
    proc = run([BASIC], out)
    assert proc.returncode == 0, proc.stderr
    for name in RESULTS:
        assert (out / name).read_bytes() == (expected / name).read_bytes()

    before = digests(out)
    proc = run_cli([BASIC], out, limit_file_size=8192)
    assert_fails_cleanly(proc, str(out), "File too large")
    assert digests(out) == before


# -- inputs whose bad records are skipped, and odd inputs that are fine ---------------------


def write(tmp: Path, name: str, data: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def run_partial(run, tmp: Path, inputs) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Run expecting exit 2; the failed records and the read rows by id."""
    out = tmp / "out"
    proc = run(inputs, out)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and not error_lines(proc.stderr)
    assert "records failed; see" in proc.stderr
    return (rows(out / "failed_records.tsv"), {r[0]: r for r in rows(out / "read_predictions.tsv")})


ORF_READ = "ATGAAACCCGGGTTTAAACCCGGGATGCCC"


def test_empty_input_file(tmp_path, run):
    empty = write(tmp_path, "empty.fa", "")
    failed, reads = run_partial(run, tmp_path, [empty])
    assert failed == [[str(empty), "input", "holds no FASTA record (empty file)"]]
    assert reads == {}
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert len((tmp_path / "out" / name).read_text().splitlines()) == 1


def test_records_with_an_empty_sequence(tmp_path, run):
    path = write(tmp_path, "in.fa", f">r1\n{ORF_READ}\n>r2 nothing\n>r3\n{ORF_READ}\n")
    failed, reads = run_partial(run, tmp_path, [path])
    assert failed == [["r2", "read", f"empty sequence ({path}, line 3)"]]
    assert reads["r2"][-1] == "failed" and reads["r1"][-1] in ("virus", "others")


def test_header_only_file(tmp_path, run):
    path = write(tmp_path, "in.fa", ">only_a_header\n")
    failed, reads = run_partial(run, tmp_path, [path])
    assert failed == [["only_a_header", "read", f"empty sequence ({path}, line 1)"]]
    assert reads["only_a_header"][-1] == "failed"


def test_duplicate_read_ids(tmp_path, run):
    first = write(tmp_path, "a.fa", f">r1\n{ORF_READ}\n>r2\n{ORF_READ}\n")
    second = write(tmp_path, "b.fa", f">r2\n{ORF_READ}\n")
    failed, reads = run_partial(run, tmp_path, [first, second])
    assert failed == [["r2", "read", f"duplicate read id ({second}, line 1)"]]
    assert len(reads) == 2  # one row per id: the first occurrence's


def test_characters_that_are_not_nucleotides(tmp_path, run):
    path = write(tmp_path, "in.fa", f">ok\n{ORF_READ}\n>digits\nACGT12ACGT\n>umlaut\nACGÄT\n")
    failed, _ = run_partial(run, tmp_path, [path])
    assert [r[0] for r in failed] == ["digits", "umlaut"]
    assert "not IUPAC nucleotide codes: '1','2'" in failed[0][2]
    assert f"({path}, line 5)" in failed[1][2]


def test_windows_line_endings_give_the_same_results(previous, tmp_path, run):
    expected, _ = previous
    crlf = write(tmp_path, "crlf.fa", BASIC.read_bytes().replace(b"\n", b"\r\n"))
    proc = run([crlf], tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    for name in RESULTS:
        assert (tmp_path / "out" / name).read_bytes() == (expected / name).read_bytes()


def test_a_read_of_one_megabase(tmp_path, run):
    rng = random.Random(7)
    sequence = "".join(rng.choice("ACGT") for _ in range(1_000_000))
    lines = "\n".join(sequence[i : i + 80] for i in range(0, len(sequence), 80))
    proc = run(
        [write(tmp_path, "long.fa", f">long\n{lines}\n>short\n{ORF_READ}\n")], tmp_path / "out"
    )
    assert proc.returncode == 0, proc.stderr
    reads = {r[0]: r for r in rows(tmp_path / "out" / "read_predictions.tsv")}
    assert reads["long"][1:3] == ["1000000", "3334"]
    orfs = rows(tmp_path / "out" / "prediction_results.txt")
    assert sum(r[0].startswith("long_chunk_") for r in orfs) == int(reads["long"][4]) > 0


def test_input_without_any_orf(tmp_path, run):
    """Reads shorter than a codon and reads with a stop codon in every frame."""
    path = write(tmp_path, "in.fa", ">a\nA\n>b\nAC\n>c\nCTAGCTAGCTAGCTAG\n>d\nctagctagctag\n")
    proc = run([path], tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = tmp_path / "out"
    for name in (
        "prediction_results.txt",
        "prediction_results_highestscore.csv",
        "failed_records.tsv",
    ):
        assert len((out / name).read_text().splitlines()) == 1, name
    assert [(r[0], r[-1]) for r in rows(out / "read_predictions.tsv")] == [
        ("a", "no_orf"),
        ("b", "no_orf"),
        ("c", "no_orf"),
        ("d", "no_orf"),
    ]
