"""Loading the base model and tokenizer with transformers from a local (PVC) path or staged S3 copy.

Weights dtype: the plain PyTorch path keeps fp32 weights and runs bf16 autocast on GPU
(fp32 master weights: CPT learning rates are below bf16's resolution); DeepSpeed ZeRO 1-3
loads bf16 weights (its optimizer keeps the fp32 master partitions); CPU is always fp32.
Attention is SDPA (flash / memory-efficient kernels on GPU).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from cpt_trainer.train.errors import TrainerInputError

logger = logging.getLogger(__name__)


def check_model_folder(folder: Path, uri: str) -> None:
    if not (folder / "config.json").is_file():
        raise TrainerInputError(f"model path {uri} has no config.json: not a transformers model folder")


def load_tokenizer(folder: Path, uri: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TrainerInputError(f"tokenizer at {uri} cannot be loaded: {exc}") from None
    if tokenizer.eos_token_id is None:
        raise TrainerInputError(f"tokenizer at {uri} has no EOS token (documents are separated by EOS)")
    return tokenizer


def count_parameters(folder: Path) -> int:
    """Parameters of the model in `folder`, counted on the meta device (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def load_model(folder: Path, dtype: torch.dtype, device: torch.device):
    """The causal LM in `folder`, on `device`, weights in `dtype`, SDPA attention, no KV cache."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, attn_implementation="sdpa", local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise TrainerInputError(f"model at {folder} cannot be loaded: {exc}") from None
    model.config.use_cache = False
    return model.to(device)


def model_shape(model) -> dict:
    """Numbers the FLOPs estimate needs."""
    cfg = model.config
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": int(cfg.num_hidden_layers),
        "hidden": int(cfg.hidden_size),
    }


def read_model_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))
