"""The models: DNABERT-S and ESM-2 for the embeddings, the classifier over both.

``MODEL_KEYS`` name the embedding models everywhere a run speaks of them (store arrays,
manifest entries, summaries, progress), in the classifier's input order: DNABERT-S
columns first, then ESM-2's.
"""

MODEL_KEYS = ("dnabert", "esm")
MODEL_NAMES = {"dnabert": "DNABERT-S", "esm": "ESM-2"}
