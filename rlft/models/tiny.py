"""The tiny preset: the pinned reference model of the benchmarks.

A 1.32M-parameter Llama (hidden 128, 4 layers, 8 heads of width 32, MLP 512, tied embeddings) with
a character-level tokenizer, warm-started on ``arith`` by :mod:`rlft.models.tiny_recipe` and
shipped with rlft in ``rlft/assets/tiny``: float32 safetensors (5.3 MB), the tokenizer, and
``build_info.json`` (the build's steps, accuracies, CPU and torch version). Loading checks each
file against :data:`TINY_SHA256`, so every machine starts from the identical pi_ref and a first
run builds nothing. The recipe's result depends on the CPU (see :mod:`rlft.models.tiny_recipe`);
that is why the weights are shipped.
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from rlft.errors import UsageError
from rlft.models.base import DEFAULT_MAX_NEW_TOKENS, PRESETS, ModelAndTokenizer, load_folder

#: The shipped weights and tokenizer of the tiny preset.
TINY_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny"
#: sha256 of every file of :data:`TINY_DIR`, checked on each load.
TINY_SHA256 = {
    "build_info.json": "51e8ea0be9383f1dfc7ee57c9913db97664b2f47b101473e102e80a6d5277992",
    "config.json": "ff5889cddfa15df501351b8d13fb1f6d3c1cee54fca50aef4eb6596e04daeccd",
    "generation_config.json": "b3774c2596ef62cd2f3a08561715f3c8b423448d4f03f89fc62181c461218360",
    "model.safetensors": "24ae47ac140c55e426a1e6f20c3024d2cbcb70ff02440398d90ed8cfd1719753",
    "tokenizer.json": "7f23864d5a64da7d8f4ace7519b818cf5fcfe489b319e57bf3c7cafa76e57592",
    "tokenizer_config.json": "17290dc0b0490b7df21ffca5a34951d2750f17a1df586059ac08f0d9fe2239c9",
}


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_pinned(folder: Path, expected: dict[str, str]) -> None:
    """Raise a one-line :class:`UsageError` unless every file of ``expected`` has its sha256."""
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise UsageError(f"{path} is missing from the pinned model; restore it (git checkout {folder}, "
                             "or reinstall rlft)")
        actual = sha256_file(path)
        if actual != digest:
            raise UsageError(f"{path} has sha256 {actual[:16]}..., not the pinned {digest[:16]}...: the file was "
                             f"changed or damaged; restore it (git checkout {folder}, or reinstall rlft)")


DEFAULT_MAX_NEW_TOKENS["tiny"] = 8  # arith answers are <= 6 tokens
#: The attention kernel of the tiny preset in float32 and bfloat16: transformers' eager attention
#: (two plain matmuls and a softmax). For 8 heads of width 32 over ~45 positions on one CPU thread
#: it is faster than the SDPA flash kernel (transformers' default), most of all in the backward pass
#: and in one-token decoding steps: ``python -m benchmarks.sweep_speed`` measures both
#: (results/throughput.md). A float64 model keeps SDPA: eager attention takes its softmax in
#: float32, which would round a float64 model's attention weights to float32, and it turns the
#: fully masked rows of left padding into NaN that then reach the real tokens (transformers 5.25).
TINY_ATTENTION = "eager"


@PRESETS.register("tiny")
def load_tiny(cache_dir: Path, dtype: torch.dtype = torch.float32, folder: Path = TINY_DIR,
              expected: dict[str, str] = TINY_SHA256) -> ModelAndTokenizer:
    """The pinned tiny preset from ``folder``, after checking its files against ``expected``."""
    check_pinned(folder, expected)
    return load_folder(folder, dtype, attn_implementation="sdpa" if dtype == torch.float64 else TINY_ATTENTION)


TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
TINY_CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_char_tokenizer(chars: str = TINY_CHARS) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character of ``chars`` (by default digits, letters,
    punctuation, space and newline; any other character is ``<unk>``).

    Special tokens ``<pad> <s> </s> <unk>`` (ids 0-3); ``<s>`` is prepended to every encoded text
    (``add_special_tokens=True``). No chat template.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(TINY_SPECIALS + list(chars))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    backend.add_special_tokens(TINY_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


