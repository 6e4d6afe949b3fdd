"""The models: the embedding models (:mod:`.registry` lists them), the classifier over
their concatenated rows.

``MODEL_KEYS`` name the embedding models everywhere a run speaks of them (store arrays,
manifest entries, summaries, progress), in the classifier's input order.
"""

from virnuc_dask.models.registry import EMBEDDING_MODELS, MODEL_KEYS, MODEL_NAMES

__all__ = ["EMBEDDING_MODELS", "MODEL_KEYS", "MODEL_NAMES"]
