"""virnuc-dask: VirNucPro viral read identification as a Dask dataflow."""

__version__ = "0.1.0"
