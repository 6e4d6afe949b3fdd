import pytest

from virnuc_dask.config import DEFAULTS_FILE, ConfigError, Settings, load_settings


def test_defaults_file_matches_settings_fields():
    settings = load_settings()
    assert settings == Settings()  # the YAML and the dataclass defaults agree
    text = DEFAULTS_FILE.read_text()
    for key in Settings.__dataclass_fields__:
        if key != "inputs":
            assert f"\n{key}:" in text, f"{key} is not documented in default.yaml"


def test_config_file_then_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("length: 300\ntoks_per_batch: 4096\n")
    settings = load_settings(
        inputs=["a.fa"], config_file=cfg, overrides={"toks_per_batch": 1024, "precision": None}
    )
    assert settings.length == 300
    assert settings.toks_per_batch == 1024
    assert settings.precision == "auto"
    assert settings.inputs == ("a.fa",)


def test_unknown_key_is_an_error_naming_allowed_keys(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lenght: 300\n")
    with pytest.raises(ConfigError, match=r"run.yaml: unknown key\(s\) lenght; allowed: .*length"):
        load_settings(config_file=cfg)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"length": 0}, "length must be a positive integer"),
        ({"precision": "fp8"}, "precision must be one of auto, fp32, bf16-mixed, bf16, fp16"),
        ({"workers": -1}, "workers must be a positive integer or null"),
        ({"overwrite": "yes"}, "overwrite must be true or false"),
    ],
)
def test_bad_values(values, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=values)


def test_config_file_not_a_mapping(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings(config_file=cfg)


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().length = 3  # type: ignore[misc]


def test_cpu_workers_embed_on_the_cpu_even_where_gpus_are_visible():
    """A CPU batch job on a node without device cgroups must not pick up a GPU."""
    cpu = load_settings(overrides={"cluster": "pbs", "worker_type": "cpu"})
    assert cpu.device == "cpu"
    assert load_settings(overrides={"cluster": "pbs", "worker_type": "gpu"}).device == "auto"
    with pytest.raises(ConfigError, match="worker_type cpu .* device cuda"):
        load_settings(overrides={"cluster": "pbs", "worker_type": "cpu", "device": "cuda"})
