"""Shared fixtures: where the GSM8K data lives, and a tiny seeded Llama with a real tokenizer built offline.

The tiny model is built once per test session: a byte-level BPE tokenizer trained (with the `tokenizers` library)
on a few hundred GSM8K lines, wrapped in PreTrainedTokenizerFast, and a randomly initialised LlamaForCausalLM with
a fixed seed, saved as safetensors so that `evalharness gsm8k --model DIR` loads it like any local model.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO_ROOT.parent / "shared" / "data" / "gsm8k"
SEED = 1234
EOS = "<|endoftext|>"
# A minimal chat template so that `--prompt chat` also works with the tiny model.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def pytest_configure(config):
    # Keep the CPU runs on the two cores the machines have, and quiet.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def gsm8k_files() -> tuple[Path, Path]:
    return GSM8K_DIR / "test.jsonl", GSM8K_DIR / "train.jsonl"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    test, train = gsm8k_files()
    if not (test.is_file() and train.is_file()):
        pytest.skip(f"GSM8K data not found at {GSM8K_DIR} (expected test.jsonl and train.jsonl in "
                    "../shared/data/gsm8k relative to the repository root)")
    return GSM8K_DIR


@pytest.fixture(scope="session")
def gsm8k_test(gsm8k_dir) -> Path:
    return gsm8k_dir / "test.jsonl"


def _training_lines(n: int = 300) -> list[str]:
    _, train = gsm8k_files()
    lines = []
    with open(train, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            lines.append(f"Question: {row['question']}\nAnswer: {row['answer']}")
            if len(lines) >= n:
                break
    return lines


def build_tokenizer(lines: list[str], vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(dest: Path, seed: int = SEED) -> Path:
    """Build and save the tiny model into `dest`; deterministic for a given seed and training text."""
    import numpy as np
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(_training_lines())
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         initializer_range=0.2, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
                         tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, gsm8k_dir) -> Path:
    """Folder with a tiny seeded Llama (config.json, model.safetensors, tokenizer files)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (SmolLM2-135M-Instruct GGUF), fetched by the product itself; skip if it cannot be."""
    from evalharness import models
    from evalharness.config import UsageError

    try:
        path = models.fetch_embedded(models.DEFAULT_MODEL)
    except (UsageError, OSError) as e:
        pytest.skip(f"embedded model {models.DEFAULT_MODEL} cannot be fetched: {e}")
    return path


@pytest.fixture(scope="session")
def gemma3():
    """The embedded Gemma 3 270M GGUF (262k-token vocabulary, hybrid sliding-window layers), where this machine
    already has it in its model cache; EVALHARNESS_TEST_FETCH_GEMMA=1 fetches it (250 MB, and its test takes over a
    minute on 2 cores: left out of the CI budget on a fresh machine); skip otherwise."""
    import os

    from evalharness import models
    from evalharness.config import UsageError

    spec = models.EMBEDDED["gemma3-270m"]
    if not (models.cache_dir() / "models" / "gemma3-270m" / spec.file).is_file() and \
            os.environ.get("EVALHARNESS_TEST_FETCH_GEMMA") != "1":
        pytest.skip("gemma3-270m is not in the model cache (EVALHARNESS_TEST_FETCH_GEMMA=1 fetches it)")
    try:
        path = models.fetch_embedded("gemma3-270m")
    except (UsageError, OSError) as e:
        pytest.skip(f"embedded model gemma3-270m cannot be fetched: {e}")
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skip them, with the reason, where torch sees no GPU."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False")
    for item in gpu_tests:
        item.add_marker(skip)
