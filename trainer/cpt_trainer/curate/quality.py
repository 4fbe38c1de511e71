"""Perplexity under a small reference causal LM (transformers, local folder), batched, on CPU
or GPU. torch and transformers are imported only when the quality filter is enabled."""

from __future__ import annotations

import logging
import math

import numpy as np

from cpt_trainer.curate.errors import CurationInputError

log = logging.getLogger(__name__)


class PerplexityScorer:
    """`score(texts)` -> perplexity per text (exp of the mean next-token loss over at most
    `max_length` tokens); NaN for a text with fewer than two tokens (it cannot be scored)."""

    def __init__(self, model_dir: str, batch_size: int = 16, max_length: int = 512, device: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise CurationInputError("quality_filter.device is cuda but no GPU is available")
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CurationInputError(f"cannot load the quality_filter model from {model_dir}: {exc}") from None
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        log.info("quality filter: %s on %s", model_dir, self.device)

    def score(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        enc = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]
        out = np.full(len(texts), np.nan, dtype=np.float64)
        # Length-sorted batches waste little on padding; results go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
        order = [i for i in order if len(enc[i]) >= 2]
        with torch.inference_mode():
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo : lo + self.batch_size]
                width = max(len(enc[i]) for i in idx)
                ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(enc[i])] = torch.tensor(enc[i])
                    mask[row, : len(enc[i])] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none"
                ).view(len(idx), width - 1)
                target_mask = mask[:, 1:].float()
                mean = (loss * target_mask).sum(1) / target_mask.sum(1)
                for row, i in enumerate(idx):
                    out[i] = math.exp(min(float(mean[row]), 700.0))
        return out
