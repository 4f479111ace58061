"""Bundled offline data: a tiny GPT-2 config and a small English corpus (see NOTICE.txt)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch


def data_path(name: str) -> Path:
    """Path of a bundled file (``demo_corpus.txt``, ``demo_gpt2_config.json``)."""
    return Path(str(resources.files(__name__).joinpath(name)))


def demo_corpus() -> str:
    return data_path("demo_corpus.txt").read_text(encoding="utf-8")


def byte_tokens(text: str) -> torch.Tensor:
    """Byte-level token ids (vocabulary 256): needs no tokenizer files, so it works offline."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def byte_blocks(text: str, block_size: int) -> torch.Tensor:
    """``(num_blocks, block_size)`` token ids, the trailing remainder dropped."""
    ids = byte_tokens(text)
    usable = len(ids) // block_size * block_size
    return ids[:usable].reshape(-1, block_size)
