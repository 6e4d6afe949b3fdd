# %% [markdown]
# # virnuc-dask from a notebook
#
# The same pipeline as `virnuc-dask predict`, driven from Python: start (or connect
# to) a Dask cluster, run the prediction, keep the dashboard open beside it, and
# look at the results as lazy Dask arrays. Open this file as a notebook with
# Jupytext (`jupytext --to notebook examples/walkthrough.py`), or run its `# %%`
# cells in VS Code or PyCharm. (As a plain script it would need an
# `if __name__ == "__main__":` guard, as any script starting a process-based
# Dask cluster does.)
#
# It uses the demonstration input and models of `virnuc-dask demo` (random
# weights: the calls mean nothing biologically). For real data, replace the
# paths with your reads, `300_model.pth`/`500_model.pth`, and leave `esm_model`
# and `dnabert_model` at their defaults (or a `model_cache` made by
# `virnuc-dask models fetch`).

# %%
from pathlib import Path

import dask
from distributed import Client, LocalCluster

from virnuc_dask import WORKER_ENV, predict
from virnuc_dask.dataflow.dashboard import worker_throughput
from virnuc_dask.models.demo import build_demo

work = Path("virnuc-walkthrough")
demo = build_demo(work)  # example.fa and three demonstration models
demo

# %% [markdown]
# ## A cluster, and its dashboard
#
# One CPU worker here. On a GPU machine use `dask_cuda.LocalCUDACluster(resources=
# {"GPU": 1})`, one worker per GPU; on SLURM/PBS, `virnuc_dask.jobqueue_cluster("slurm")`
# (then `cluster.scale(jobs=4)`); for a running scheduler, `Client("tcp://host:8786")`.
# `WORKER_ENV` keeps Dask's nanny from exporting MALLOC_TRIM_THRESHOLD_, which makes
# torch on CPU workers several times slower. Open the dashboard link while the next
# cell runs: the task stream shows the stages (read_orfs, orf-slice, embed, classify,
# write-results) and the Workers table the ORFs each worker embedded.

# %%
with dask.config.set(WORKER_ENV):
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=2, resources={"GPU": 1}, dashboard_address=":0"
    )
client = Client(cluster)
print("dashboard:", client.dashboard_link)

# %% [markdown]
# ## Predict
#
# Keyword options are the settings of `configs/default.yaml`. The call returns when
# the result files are written; a performance report of the run goes to an HTML file.

# %%
result = predict(
    demo["input"],
    out=work / "results",
    classifier=demo["classifier"],
    esm_model=str(demo["esm"]),
    dnabert_model=str(demo["dnabert"]),
    length=300,
    precision="fp32",
    keep_embeddings=True,  # the store keeps both models' vectors (else: ids and scores)
    client=client,
    performance_report=work / "performance-report.html",
)
print(result.counts)
result.paths

# %% [markdown]
# ## Lazy results
#
# `scores`, `embeddings` and `ids` are Dask arrays over `embeddings.zarr`: nothing is
# read until computed, so they work the same for a million reads.

# %%
scores = result.scores  # [ORFs, 2]: P(others), P(virus)
viral = scores[:, 1] >= scores[:, 0]
print(f"{int(viral.sum().compute())} of {scores.shape[0]} ORFs score as viral")
print("first ORFs:", list(result.ids[:3].compute()))

# %%
esm = result.embeddings["esm"]  # [ORFs, ESM-2 width]
print(
    "ESM-2 embeddings:", esm.shape, "mean norm", float((esm**2).sum(axis=1).mean().compute() ** 0.5)
)

# %% [markdown]
# Per-read calls are in `read_predictions.tsv`:

# %%
print("\n".join(result.paths["reads"].read_text().splitlines()[:4]))

# %% [markdown]
# ## Throughput per worker
#
# Recorded with Dask's metrics (the dashboard's Workers table and Fine Performance
# Metrics page show the same numbers).

# %%
for address, totals in worker_throughput(client).items():
    print(
        address,
        f"{totals['embedded_orfs']:.0f} ORFs, "
        f"{totals['embed_orfs_per_s']:.0f} ORFs/s of model time",
    )

# %%
client.close()
cluster.close()
