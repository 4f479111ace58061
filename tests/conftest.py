"""Shared fixtures: offline mode, seeds, and tiny models of six architectures built from configs."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # an accidental download fails loudly
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402  (torch alone does not import Triton)

if not torch.cuda.is_available():
    # Triton kernels run in its interpreter on CPU tensors; it must be set before Triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import copy  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PreTrainedTokenizerFast,  # noqa: E402
    T5Config,
    ViTConfig,
)
from transformers.utils import logging as hf_logging  # noqa: E402

import hf_sparse  # noqa: E402,F401  (registers the quantizer)

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

VOCAB = 64


@dataclass
class TinyModel:
    """A tiny architecture: how to build it, which auto class reloads it, and example inputs."""

    name: str
    auto_class: Any
    config: Any
    generates: bool = False

    def build(self, seed: int = 0):
        torch.manual_seed(seed)
        return self.auto_class.from_config(copy.deepcopy(self.config)).eval()

    def inputs(self, batch: int = 2, seq: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        if self.name == "vit":
            pixels = torch.randn(batch, 3, 16, 16, generator=gen)
            return {"pixel_values": pixels, "labels": torch.tensor([0, 2])[:batch]}
        ids = torch.randint(1, VOCAB, (batch, seq), generator=gen)
        if self.name == "bert":
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1])[:batch]}
        if self.name == "t5":
            return {"input_ids": ids, "labels": torch.randint(1, VOCAB, (batch, 6), generator=gen)}
        return {"input_ids": ids, "labels": ids}


TINY_MODELS = {
    "gpt2": TinyModel("gpt2", AutoModelForCausalLM,
                      GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=64, vocab_size=VOCAB, n_positions=32,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=0), generates=True),
    "bert": TinyModel("bert", AutoModelForSequenceClassification,
                      BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=VOCAB, max_position_embeddings=32, num_labels=2)),
    "llama": TinyModel("llama", AutoModelForCausalLM,
                       LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, vocab_size=VOCAB, max_position_embeddings=32,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0), generates=True),
    "opt": TinyModel("opt", AutoModelForCausalLM,
                     OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                               vocab_size=VOCAB, max_position_embeddings=32, word_embed_proj_dim=32,
                               bos_token_id=0, eos_token_id=0, pad_token_id=1), generates=True),
    "t5": TinyModel("t5", AutoModelForSeq2SeqLM,
                    T5Config(d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2, vocab_size=VOCAB,
                             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1), generates=True),
    "vit": TinyModel("vit", AutoModelForImageClassification,
                     ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, num_labels=3)),
}


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny(request) -> TinyModel:
    return TINY_MODELS[request.param]


@pytest.fixture
def gpt2() -> TinyModel:
    return TINY_MODELS["gpt2"]


@pytest.fixture
def one_thread():
    """Run on one torch thread (tiny models and small SVDs are faster so, whatever else runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def llama_calibration():
    """(build, batches): a tiny LLaMA factory and six calibration batches of random tokens."""
    spec = TINY_MODELS["llama"]
    gen = torch.Generator().manual_seed(123)
    batches = [{"input_ids": torch.randint(1, VOCAB, (4, 16), generator=gen)} for _ in range(6)]
    return spec.build, batches


def word_tokenizer(vocab_size: int = VOCAB) -> PreTrainedTokenizerFast:
    """An offline word-level tokenizer over the words ``w2 .. w{vocab_size - 1}`` (0 = pad, 1 = unk)."""
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def word_texts(lines: int, words: int = 12, seed: int = 0) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    return [" ".join(f"w{int(i)}" for i in torch.randint(2, VOCAB, (words,), generator=gen)) for _ in range(lines)]


@pytest.fixture
def model_with_texts(tmp_path):
    """(model dir, calibration file, held-out file): the tiny GPT-2 saved with the word tokenizer, and two
    text files of word lines."""
    model_dir = tmp_path / "dense"
    TINY_MODELS["gpt2"].build().save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    (tmp_path / "calib.txt").write_text("\n".join(word_texts(16, seed=1)))
    (tmp_path / "eval.txt").write_text("\n".join(word_texts(8, seed=2)))
    return model_dir, tmp_path / "calib.txt", tmp_path / "eval.txt"
