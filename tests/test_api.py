"""The Python API: the CLI's pipeline, lazy arrays over the store, a client given or made."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from helpers import TINY, assert_matches_reference, read_embeddings_tsv, read_results

import virnuc_dask
from virnuc_dask import Prediction, predict
from virnuc_dask.config import ConfigError


def test_predict_returns_lazy_arrays_and_paths(client, reference, tmp_path):
    ref = reference / "dev" / "boundaries" / "L300"
    result = predict(
        reference / "dev" / "boundaries" / "input.fa",
        out=tmp_path / "out",
        classifier=TINY["classifier"],
        client=client,
        length=300,
        esm_model=TINY["esm_model"],
        dnabert_model=TINY["dnabert_model"],
        precision="fp32",
        partition_rows=37,
        keep_embeddings=True,
        performance_report=tmp_path / "report.html",
    )
    assert isinstance(result, Prediction)
    assert result.exit_code == 0
    assert result.dashboard_link == client.dashboard_link
    assert_matches_reference(tmp_path / "out", ref)
    assert result.paths["predictions"] == tmp_path / "out" / "prediction_results.txt"
    assert all(path.exists() for path in result.paths.values())
    assert "Dask Performance Report" in (tmp_path / "report.html").read_text()

    for array in (result.scores, result.ids, result.features, *result.embeddings.values()):
        assert isinstance(array, da.Array)
    assert result.scores.chunks[0] == (37,) * 5 + (211 - 5 * 37,)  # the store's partitions
    ids, esm = read_embeddings_tsv(ref / "esm_embeddings.tsv")
    assert list(result.ids.compute()) == ids
    assert np.abs(result.embeddings["esm"].compute() - esm).max() <= 1e-5
    assert result.features.shape == (211, 128)
    _, scores = read_results(ref / "prediction_results.txt")
    assert np.abs(result.scores.compute() - scores).max() <= 1e-5


def test_predict_starts_and_stops_its_own_cluster(reference, tmp_path):
    result = predict(
        [str(reference / "dev" / "basic" / "input.fa")],
        out=tmp_path,
        classifier=TINY["classifier"],
        length=500,
        esm_model=TINY["esm_model"],
        dnabert_model=TINY["dnabert_model"],
        precision="fp32",
        workers=1,
    )
    assert result.exit_code == 0
    assert_matches_reference(tmp_path, reference / "dev" / "basic" / "L500")
    # The arrays read from disk and need no cluster.
    assert result.scores.sum().compute() == pytest.approx(result.counts.orfs, rel=1e-5)
    # Embeddings only when asked for.
    with pytest.raises(ValueError, match="keep_embeddings=True"):
        result.embeddings  # noqa: B018


def test_unknown_option_names_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) lenght; allowed: .*length"):
        predict("reads.fa", out=tmp_path, classifier="m.pth", lenght=300)


def test_package_exports_resolve():
    for name in virnuc_dask.__all__:
        assert getattr(virnuc_dask, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        virnuc_dask.nope  # noqa: B018
