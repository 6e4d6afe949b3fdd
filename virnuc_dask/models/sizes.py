"""Layouts of the randomly initialised models that ``bench`` builds (no torch needed to
name them)."""

from __future__ import annotations

SIZES: dict[str, dict[str, dict[str, int]]] = {
    "small": {
        "esm": {"layers": 6, "dim": 320, "heads": 20},
        "dnabert": {"layers": 2, "hidden": 256, "heads": 4, "intermediate": 1024},
    },
    "tiny": {
        "esm": {"layers": 2, "dim": 64, "heads": 4},
        "dnabert": {"layers": 2, "hidden": 64, "heads": 4, "intermediate": 128},
    },
    # The models VirNucPro runs (DNABERT-S with the 512-token BPE vocabulary these builds
    # train, not its 4096: the embedding table is a lookup and costs no FLOPs); for GPUs.
    "650m": {
        "esm": {"layers": 33, "dim": 1280, "heads": 20},
        "dnabert": {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072},
    },
    "real": {
        "esm": {"layers": 36, "dim": 2560, "heads": 40},
        "dnabert": {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072},
    },
}
