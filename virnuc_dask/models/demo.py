"""Demonstration models and an example input, built locally so the quick start runs offline.

The three models are randomly initialised (seeded) but stored in the *real*
formats, so they exercise exactly the loading code the published models go
through:

- ``esm2_t2_64_demo.pt`` (+ ``-contact-regression.pt``): fair-esm ESM-2 checkpoint
  layout (2 layers, 64-d, 4 heads, ESM-1b alphabet);
- ``dnabert_s_demo/``: DNABERT-S ``config.json`` (published fields, small sizes),
  ``model.safetensors`` with the published key names, and a ``tokenizer.json``
  (BPE over A/C/G/T with ``[UNK] [CLS] [SEP] [PAD] [MASK]``) trained here;
- ``mlp_demo.pth``: a whole pickled ``__main__.MLPClassifier`` as VirNucPro ships.

These are demonstration weights: the calls they produce mean nothing biologically.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import torch

from virnuc_dask.config import Settings, load_settings
from virnuc_dask.models.registry import EMBEDDING_MODELS

logger = logging.getLogger(__name__)

DEMO_SEED = 1997
CODONS = {
    "A": ["GCT", "GCC", "GCA", "GCG"],
    "R": ["CGT", "CGC", "CGA", "CGG", "AGA", "AGG"],
    "N": ["AAT", "AAC"],
    "D": ["GAT", "GAC"],
    "C": ["TGT", "TGC"],
    "Q": ["CAA", "CAG"],
    "E": ["GAA", "GAG"],
    "G": ["GGT", "GGC", "GGA", "GGG"],
    "H": ["CAT", "CAC"],
    "I": ["ATT", "ATC", "ATA"],
    "L": ["TTA", "TTG", "CTT", "CTC", "CTA", "CTG"],
    "K": ["AAA", "AAG"],
    "M": ["ATG"],
    "F": ["TTT", "TTC"],
    "P": ["CCT", "CCC", "CCA", "CCG"],
    "S": ["TCT", "TCC", "TCA", "TCG", "AGT", "AGC"],
    "T": ["ACT", "ACC", "ACA", "ACG"],
    "W": ["TGG"],
    "Y": ["TAT", "TAC"],
    "V": ["GTT", "GTC", "GTA", "GTG"],
}


def example_reads(
    n: int = 60,
    seed: int = DEMO_SEED,
    *,
    min_length: int = 150,
    max_length: int = 1500,
    random_every: int = 5,
) -> list[tuple[str, str]]:
    """Coding-like reads (stop-free proteins reverse-translated) and, every
    ``random_every``-th read (0: none), a random one; lengths uniform in the bounds."""
    rng = random.Random(seed)
    reads = []
    for i in range(n):
        length = rng.randint(min_length, max_length)
        if random_every and i % random_every == random_every - 1:
            seq = "".join(rng.choice("ACGT") for _ in range(length))
        else:
            protein = [rng.choice(list(CODONS)) for _ in range(length // 3)]
            seq = "".join(rng.choice(CODONS[aa]) for aa in protein)
        reads.append((f"demo_read_{i + 1:03d}", seq))
    return reads


def write_fasta(path: Path, reads: list[tuple[str, str]]) -> None:
    with open(path, "w") as fh:
        for name, seq in reads:
            fh.write(f">{name} demonstration read\n")
            fh.writelines(seq[i : i + 60] + "\n" for i in range(0, len(seq), 60))


def build_esm(path: Path, *, layers: int = 2, dim: int = 64, heads: int = 4) -> Path:
    import esm
    from esm.model.esm2 import ESM2

    torch.manual_seed(DEMO_SEED)
    model = ESM2(
        num_layers=layers,
        embed_dim=dim,
        attention_heads=heads,
        alphabet=esm.Alphabet.from_architecture("ESM-1b"),
        token_dropout=True,
    )
    state = {}
    for key, value in model.state_dict().items():
        prefix = "encoder." if key.startswith("lm_head") else "encoder.sentence_encoder."
        if not key.startswith("contact_head"):
            state[prefix + key] = value
    cfg = argparse.Namespace(
        encoder_layers=layers,
        encoder_embed_dim=dim,
        encoder_attention_heads=heads,
        token_dropout=True,
    )
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    regression = {k: v for k, v in model.state_dict().items() if k.startswith("contact_head")}
    torch.save({"model": regression}, path.with_name(path.stem + "-contact-regression.pt"))
    return path


def build_dnabert(
    directory: Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int = 128
) -> Path:
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, processors, trainers

    from virnuc_dask.models.dnabert_encoder import DnabertConfig, DnabertS

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(DEMO_SEED)
    corpus = ["".join(rng.choice("ACGT") for _ in range(400)) for _ in range(200)]
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=specials,
            initial_alphabet=list("ACGT"),
            show_progress=False,
        ),
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "alibi_starting_size": 512,
        "attention_probs_dropout_prob": 0.0,
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "type_vocab_size": 2,
        "vocab_size": tokenizer.get_vocab_size(),
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(DEMO_SEED)
    model = DnabertS(DnabertConfig.from_json(directory / "config.json"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layernorm" in name:
                p.copy_(
                    1 + 0.1 * torch.randn_like(p)
                    if name.endswith("weight")
                    else 0.05 * torch.randn_like(p)
                )
            else:
                p.copy_(0.05 * torch.randn_like(p))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(directory / "model.safetensors"),
    )
    return directory


def build_classifier(path: Path, input_dim: int = 128, hidden: int = 32) -> Path:
    from virnuc_dask.models.classifier import MLPClassifier

    torch.manual_seed(DEMO_SEED)
    model = MLPClassifier(input_dim, hidden, 2)
    with torch.no_grad():
        model.bn1.running_mean.normal_(0, 0.1)
        model.bn1.running_var.uniform_(0.5, 1.5)
    model.eval()
    # VirNucPro's files pickle the class as __main__.MLPClassifier; write the same.
    main = sys.modules["__main__"]
    saved = (model.__class__.__module__, model.__class__.__qualname__)
    had = getattr(main, "MLPClassifier", None)
    try:
        MLPClassifier.__module__, MLPClassifier.__qualname__ = "__main__", "MLPClassifier"
        main.MLPClassifier = MLPClassifier
        torch.save(model, path)
    finally:
        MLPClassifier.__module__, MLPClassifier.__qualname__ = saved
        if had is None:
            del main.MLPClassifier
        else:
            main.MLPClassifier = had
    return path


def build_demo(directory: Path) -> dict[str, Path]:
    """Write the example input and the three demonstration models under ``directory``."""
    models = directory / "models"
    models.mkdir(parents=True, exist_ok=True)
    fasta = directory / "example.fa"
    write_fasta(fasta, example_reads())
    return {
        "input": fasta,
        "esm": build_esm(models / "esm2_t2_64_demo.pt"),
        "dnabert": build_dnabert(models / "dnabert_s_demo"),
        "classifier": build_classifier(models / "mlp_demo.pth"),
    }


def demo_settings(directory: Path, *, workers: int | None = None) -> Settings:
    """Build the demonstration under ``directory`` and the settings of its prediction."""
    paths = build_demo(directory)
    logger.info(
        "demonstration models and example written to %s (random weights: the calls "
        "mean nothing biologically)",
        directory,
    )
    return load_settings(
        inputs=[str(paths["input"])],
        overrides={
            "out": str(directory / "results"),
            "length": 300,
            **{m.source_setting: str(paths[m.key]) for m in EMBEDDING_MODELS},
            "classifier": str(paths["classifier"]),
            "precision": "fp32",
            "workers": workers,
            "offline": True,
        },
    ).with_absolute_paths()
