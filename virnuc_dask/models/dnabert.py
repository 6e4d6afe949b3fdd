"""DNABERT-S from its published files: a local directory or a Hugging Face Hub snapshot
(checked for ``config.json``, ``tokenizer.json`` and weights), the BPE tokenizer as
transformers calls it, and the weights read into the native encoder of
:mod:`.dnabert_encoder` on a device and dtype."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from virnuc_dask.errors import ModelLoadError
from virnuc_dask.models.adapter import Batch, Tokens, pad, parameter_dtype
from virnuc_dask.models.dnabert_encoder import DnabertConfig, DnabertS

logger = logging.getLogger(__name__)

DEFAULT_DNABERT_SOURCE = "zhihan1996/DNABERT-S"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_PATTERNS = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "*.safetensors",
    "pytorch_model.bin",
]


class DnabertTokenizer:
    """The published BPE tokenizer via the ``tokenizers`` library, as transformers calls it:
    no padding, no truncation, ``[CLS] ... [SEP]`` from the post-processor.

    There is no normalizer: pass upper-case sequences (other letters become ``[UNK]``).
    """

    def __init__(self, tokenizer: object) -> None:
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        padding = tokenizer.padding
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        pad_id = tokenizer.token_to_id("[PAD]")
        if pad_id is None and padding is not None:
            pad_id = padding.get("pad_id")
        if pad_id is None:
            raise ValueError("tokenizer has no [PAD] token")
        self.pad_id: int = int(pad_id)
        self.vocab_size: int = tokenizer.get_vocab_size()

    @classmethod
    def from_file(cls, path: str | Path) -> DnabertTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def encode(self, seqs: Sequence[str]) -> list[list[int]]:
        """Token ids of each sequence, special tokens included, unpadded."""
        encodings = self._tokenizer.encode_batch(list(seqs), add_special_tokens=True)
        return [enc.ids for enc in encodings]


def _check_model_dir(path: Path) -> Path:
    missing = [name for name in ("config.json", "tokenizer.json") if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise FileNotFoundError(f"DNABERT-S directory {path} lacks {', '.join(missing)}")
    return path


def resolve_dnabert_dir(
    source: str = DEFAULT_DNABERT_SOURCE,
    *,
    cache_dir: str | None = None,
    offline: bool = False,
) -> Path:
    """A local model directory (checked for its files), else a Hugging Face Hub snapshot."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _check_model_dir(path)
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise FileNotFoundError(f"DNABERT-S source {source!r} is neither a directory nor a hub id")
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(
            source,
            allow_patterns=HUB_PATTERNS,
            cache_dir=cache_dir,
            local_files_only=offline,
        )
    except Exception as exc:  # hub/network/cache errors come in many types
        mode = "the local cache (offline)" if offline else "the Hugging Face Hub"
        raise ModelLoadError(
            f"DNABERT-S {source!r} is not a local directory and could not be fetched from "
            f"{mode}: {exc}"
        ) from exc
    return _check_model_dir(Path(snapshot))


def _read_state_dict(model_dir: Path) -> tuple[dict[str, Tensor], Path]:
    safetensors_path = model_dir / "model.safetensors"
    path = safetensors_path if safetensors_path.is_file() else model_dir / "pytorch_model.bin"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise pickle, zip, safetensors or OS errors
        raise ModelLoadError(f"cannot read DNABERT-S weights {path}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ModelLoadError(
            f"DNABERT-S weights {path} hold a {type(state).__name__}, not a state dict"
        )
    return dict(state), path


def load_dnabert(
    source: str = DEFAULT_DNABERT_SOURCE,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | None = None,
    offline: bool = False,
) -> tuple[DnabertS, DnabertTokenizer]:
    """Model (eval mode, no grad, on ``device``/``dtype``) and tokenizer from a dir or hub id."""
    model_dir = resolve_dnabert_dir(source, cache_dir=cache_dir, offline=offline)
    config = DnabertConfig.from_json(model_dir / "config.json")
    tokenizer = DnabertTokenizer.from_file(model_dir / "tokenizer.json")
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelLoadError(
            f"tokenizer vocabulary ({tokenizer.vocab_size}) exceeds the model's "
            f"vocab_size ({config.vocab_size}) in {model_dir}"
        )
    state, weights_path = _read_state_dict(model_dir)
    model = DnabertS(config)
    model.load_checkpoint(state, source=str(weights_path))
    model.requires_grad_(False)
    model.to(device=device, dtype=dtype).eval()
    logger.info(
        "loaded DNABERT-S from %s (%d layers, hidden %d) on %s as %s",
        weights_path,
        config.num_hidden_layers,
        config.hidden_size,
        device,
        dtype,
    )
    return model, tokenizer


# -- the adapter the batch runner drives ---------------------------------------------------
#
# Pooling reproduces the original exactly: the mean of the last hidden state over *all*
# tokens of the sequence, ``[CLS]`` and ``[SEP]`` included (the original embeds one
# unpadded sequence per call and averages every position); padding is masked out here.

# CPU budgets: on 2 AVX-512 cores with the bench models (ESM-2 6 x 320, DNABERT-S 2 x 256)
# throughput was flat from 2048 to 16384 tokens (within the noise of a shared machine);
# these are at the fast end and keep batches, hence padding, small.
CPU_TOKS_PER_BATCH = 4096
DNABERT_TOKENIZE_SLICE = 512


def dnabert_bytes_per_token(model: torch.nn.Module, longest: int) -> int:
    """Activation bytes one token needs in a DNABERT-S forward: about 24 hidden-size
    vectors (gated MLP of 2 x 4 x hidden) plus its materialised ALiBi/padding bias row
    per head."""
    cfg = model.config
    elem = torch.finfo(parameter_dtype(model)).bits // 8
    return elem * (24 * cfg.hidden_size + cfg.num_attention_heads * longest) + 4 * cfg.hidden_size


@dataclasses.dataclass
class DnabertAdapter:
    """DNABERT-S for the runner: the native model and its ``tokenizers`` tokenizer."""

    model: torch.nn.Module
    tokenizer: object
    name: str = "DNABERT-S"
    cpu_tokens: int = CPU_TOKS_PER_BATCH
    # BPE is slow: slices let the first batch start while the rest is tokenised.
    tokenize_slice: int | None = DNABERT_TOKENIZE_SLICE

    @property
    def width(self) -> int:
        return self.model.hidden_size

    @property
    def heads(self) -> int:
        return self.model.config.num_attention_heads

    def token_bound(self, texts: Sequence[str]) -> np.ndarray:
        # At most one token per base, plus [CLS] and [SEP].
        return np.array([len(s) + 2 for s in texts], dtype=np.int64)

    def tokenize(self, texts: Sequence[str]) -> list[Tokens]:
        return self.tokenizer.encode(list(texts))

    def prepare(self, tokens: Sequence[Tokens], lengths: np.ndarray) -> Batch:
        ids = pad(tokens, self.tokenizer.pad_id)
        # From lengths, not from `ids != pad`: a real token may share the padding id.
        mask = torch.arange(ids.shape[1])[None, :] < torch.as_tensor(lengths)[:, None]
        return {"ids": ids, "mask": mask}

    def forward(self, batch: Batch) -> torch.Tensor:
        from virnuc_dask.models.dnabert_encoder import mean_pool_all_tokens

        hidden = self.model(batch["ids"], batch["mask"])
        return mean_pool_all_tokens(hidden, batch["mask"])

    def bytes_per_token(self, longest: int) -> int:
        return dnabert_bytes_per_token(self.model, longest)


def load_adapter(source: str, **options: Any) -> DnabertAdapter:
    """DNABERT-S from ``source`` for the batch runner (the options of :func:`load_dnabert`)."""
    return DnabertAdapter(*load_dnabert(source, **options))


def load_module(source: str, **options: Any) -> torch.nn.Module:
    """The native DNABERT-S module from ``source`` (the options of :func:`load_dnabert`)."""
    return load_dnabert(source, **options)[0]


def source_shape(source: str, model_cache: str | None = None) -> Any:
    """The layout of DNABERT-S ``source`` for the FLOP count, without loading it (None:
    unknown)."""
    from virnuc_dask.models.flops import dnabert_source_shape

    return dnabert_source_shape(source, model_cache)


@torch.inference_mode()
def original_embed(
    adapter: DnabertAdapter, sequences: Sequence[str], *, device: torch.device
) -> np.ndarray:
    """DNABERT-S the original way: one unpadded sequence per call, mean over all tokens."""
    model, tokenizer = adapter.model, adapter.tokenizer
    out = np.zeros((len(sequences), model.hidden_size), dtype=np.float32)
    for i, seq in enumerate(sequences):
        (ids,) = tokenizer.encode([seq])
        hidden = model(torch.tensor([ids], device=device))
        out[i] = hidden.mean(dim=1)[0].float().cpu().numpy()
    return out
