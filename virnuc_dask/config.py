"""One frozen configuration, built once: package defaults -> config file -> flags.

The defaults live, commented key by key, in ``default.yaml`` beside this module
(``configs/default.yaml`` in the source tree points at it). Unknown keys are an
error that names the allowed ones.

>>> settings = load_settings(overrides={"length": 300, "classifier": "300_model.pth"})
>>> settings.length
300
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from virnuc_dask.errors import ConfigError

DEFAULTS_FILE = Path(__file__).with_name("default.yaml")
PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16", "fp16")
COMPILE = ("auto", "on", "off")
DEVICES = ("auto", "cuda", "cpu")
CLUSTERS = ("local", "slurm", "pbs", "slurm-runner")
JOBQUEUE_SYSTEMS = ("slurm", "pbs")
WORKER_TYPES = ("gpu", "cpu")
EMBEDDINGS_DTYPES = ("float32", "float16")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, validated. Build with :func:`load_settings`."""

    inputs: tuple[str, ...] = ()
    out: str | None = None
    length: int = 500
    esm_model: str = "esm2_t36_3B_UR50D"
    dnabert_model: str = "zhihan1996/DNABERT-S"
    classifier: str | None = None
    model_cache: str | None = None
    offline: bool = False
    precision: str = "auto"
    compile: str = "auto"
    device: str = "auto"
    workers: int | None = None
    threads: int | None = None
    gpus: str | None = None
    scheduler: str | None = None
    scheduler_file: str | None = None
    cluster: str = "local"
    jobs: int | None = None
    cluster_config: str | None = None
    worker_type: str | None = None
    job_processes: int | None = None
    job_cores: int | None = None
    job_memory: str | None = None
    job_replacements: int = 8
    start_timeout: float | None = None
    no_worker_timeout: float = 300.0
    stuck_after: float = 300.0
    dashboard_address: str = "localhost:8787"
    performance_report: str | None = None
    toks_per_batch: int | None = None
    dnabert_toks_per_batch: int | None = None
    partition_rows: int = 2048
    blocksize: int = 8 * 2**20
    dedup: bool = True
    keep_embeddings: bool = False
    embeddings_dtype: str = "float32"
    overwrite: bool = False

    def __post_init__(self) -> None:
        for key in ("length", "partition_rows", "blocksize"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        for key in (
            "workers",
            "threads",
            "jobs",
            "toks_per_batch",
            "dnabert_toks_per_batch",
            "job_processes",
            "job_cores",
        ):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(f"{key} must be a positive integer or null, got {value!r}")
        if (
            isinstance(self.job_replacements, bool)
            or not isinstance(self.job_replacements, int)
            or self.job_replacements < 0
        ):
            raise ConfigError(
                f"job_replacements must be an integer >= 0, got {self.job_replacements!r}"
            )
        for key in ("start_timeout", "no_worker_timeout", "stuck_after"):
            value = getattr(self, key)
            if (value is not None or key != "start_timeout") and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise ConfigError(
                    f"{key} must be a number of seconds > 0"
                    f"{' or null' if key == 'start_timeout' else ''}, got {value!r}"
                )
        port = str(self.dashboard_address).rpartition(":")[2]
        if not isinstance(self.dashboard_address, str) or not port.isdigit():
            raise ConfigError(
                "dashboard_address must be HOST:PORT (localhost:8787; :8787 for every "
                f"interface; port 0 for any free one), got {self.dashboard_address!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.compile not in COMPILE:
            raise ConfigError(f"compile must be one of {', '.join(COMPILE)}, got {self.compile!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.cluster not in CLUSTERS:
            raise ConfigError(f"cluster must be one of {', '.join(CLUSTERS)}, got {self.cluster!r}")
        if self.scheduler and self.scheduler_file:
            raise ConfigError("scheduler and scheduler_file both given; choose one")
        if (self.scheduler or self.scheduler_file) and self.cluster != "local":
            raise ConfigError(
                f"cluster {self.cluster!r} starts its own scheduler; it cannot be combined "
                "with scheduler or scheduler_file"
            )
        if self.worker_type is not None and self.worker_type not in WORKER_TYPES:
            raise ConfigError(
                f"worker_type must be one of {', '.join(WORKER_TYPES)}, got {self.worker_type!r}"
            )
        if self.worker_type == "cpu" and self.device == "cuda":
            raise ConfigError(
                "worker_type cpu asks for no GPU; it cannot be combined with device cuda"
            )
        if self.worker_type is not None and self.cluster not in (*JOBQUEUE_SYSTEMS, "slurm-runner"):
            raise ConfigError(
                f"worker_type applies to cluster slurm, pbs or slurm-runner, not {self.cluster!r}"
            )
        for key in ("job_processes", "job_cores", "job_memory"):
            if getattr(self, key) is not None and self.cluster not in JOBQUEUE_SYSTEMS:
                raise ConfigError(f"{key} applies to cluster slurm or pbs, not {self.cluster!r}")
        if self.jobs is not None and self.cluster not in ("slurm", "pbs"):
            raise ConfigError(f"jobs applies to cluster slurm or pbs, not {self.cluster!r}")
        if self.cluster_config is not None and self.cluster not in ("slurm", "pbs"):
            raise ConfigError(
                f"cluster_config applies to cluster slurm or pbs, not {self.cluster!r}"
            )
        if self.embeddings_dtype not in EMBEDDINGS_DTYPES:
            raise ConfigError(
                f"embeddings_dtype must be one of {', '.join(EMBEDDINGS_DTYPES)}, "
                f"got {self.embeddings_dtype!r}"
            )
        for key in ("offline", "overwrite", "dedup", "keep_embeddings"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}")

    @property
    def kept_embeddings(self) -> str | None:
        """The dtype the store keeps the embeddings in; None: it keeps none."""
        return self.embeddings_dtype if self.keep_embeddings else None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def with_absolute_paths(self) -> Settings:
        """The same settings with every file path absolute.

        Workers of a cluster started elsewhere (``dask worker`` by hand, a batch job)
        run in another working directory; absolute paths mean the same file there.
        Model sources that are not existing paths (hub names) are kept as given.
        """

        def absolute(path: str | None) -> str | None:
            return None if path is None else os.path.abspath(os.path.expanduser(path))

        def if_local(source: str) -> str:
            return absolute(source) if Path(source).expanduser().exists() else source

        return self.replace(
            inputs=tuple(absolute(p) for p in self.inputs),
            out=absolute(self.out),
            classifier=absolute(self.classifier),
            model_cache=absolute(self.model_cache),
            esm_model=if_local(self.esm_model),
            dnabert_model=if_local(self.dnabert_model),
            scheduler_file=absolute(self.scheduler_file),
            cluster_config=absolute(self.cluster_config),
            performance_report=absolute(self.performance_report),
        )


FILE_KEYS = tuple(f.name for f in dataclasses.fields(Settings) if f.name != "inputs")


def _check_keys(values: Mapping[str, Any], source: str) -> None:
    unknown = sorted(set(values) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(FILE_KEYS)}"
        )


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping of settings; error on anything else."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    _check_keys(values, str(path))
    return values


def load_settings(
    *,
    inputs: tuple[str, ...] | list[str] = (),
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge package defaults, an optional config file and explicit overrides.

    ``overrides`` holds only the values the user gave (``None`` means "not given").
    """
    values = read_config_file(DEFAULTS_FILE)
    if config_file is not None:
        values.update(read_config_file(config_file))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_keys(given, "overrides")
    values.update(given)
    if values.get("worker_type") == "cpu" and values.get("device") == "auto":
        # A CPU job on a node without device cgroups may see GPUs it was not given.
        values["device"] = "cpu"
    return Settings(inputs=tuple(str(p) for p in inputs), **values)
