"""What every model preset shares: the preset registry, the cache folder, loading a model folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlft.errors import UsageError
from rlft.registry import Registry

ModelAndTokenizer = tuple[PreTrainedModel, PreTrainedTokenizerBase]
#: ``loader(cache_dir, dtype) -> (model, tokenizer)``; ``cache_dir`` is for presets built on first use.
PresetLoader = Callable[[Path, torch.dtype], ModelAndTokenizer]

#: Preset name -> loader. Third-party presets register through the ``rlft.models`` entry-point group.
PRESETS: Registry[PresetLoader] = Registry("model preset", "rlft.models")
#: A preset's completion budget when a run's ``max_new_tokens`` is 0, set where the preset registers.
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {}
FALLBACK_MAX_NEW_TOKENS = 256


def default_max_new_tokens(spec: str) -> int:
    """The completion budget of model ``spec``: its preset's, else :data:`FALLBACK_MAX_NEW_TOKENS`."""
    return DEFAULT_MAX_NEW_TOKENS.get(spec, FALLBACK_MAX_NEW_TOKENS)


def default_cache_dir() -> Path:
    """``$RLFT_CACHE`` if set, else ``~/.cache/rlft``."""
    return Path(os.environ.get("RLFT_CACHE") or Path.home() / ".cache" / "rlft").expanduser()


def load_folder(path: Path | str, dtype: torch.dtype, attn_implementation: str | None = None) -> ModelAndTokenizer:
    """A transformers model folder (or hub name) as an eval-mode causal LM and its tokenizer.

    ``attn_implementation``: transformers' attention kernel (``"eager"``, ``"sdpa"``, ...); None
    takes transformers' default for the model.
    """
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer


def ensure_pad(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` a pad token (its EOS token) if it has none."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
