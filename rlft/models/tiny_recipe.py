"""The recipe that made the tiny preset: supervised warm start of a small Llama on ``arith``.

    python -m rlft.models.tiny_recipe --out DIR [--seed 0] [--max-steps 1500] [--FIELD VALUE ...]

Every machine loads the pinned result shipped in ``rlft/assets/tiny`` (:mod:`rlft.models.tiny`);
this command rebuilds it, for a developer who changes the recipe or wants to see how it was made.
It shows a progress bar, reports whether held-out sampled accuracy reached the target, writes the
model, the tokenizer and ``build_info.json`` (steps, seconds, accuracies, CPU, torch) into DIR and
prints the files' sha256.

**A rebuild gives another model on another CPU.** The recipe is deterministic on one machine, but
CPUs with other vector units (AVX2 / AVX-512) sum matrix products in other orders, and a thousand
steps of training amplify those last-bit differences into other weights (built from the same seed,
three machines gave 0.23, 0.22 and 0.33 sampled test accuracy with recipe version 2). That is why
the weights are shipped instead of built on first use.

To pin a new build: ``rm -r rlft/assets/tiny && python -m rlft.models.tiny_recipe --out
rlft/assets/tiny``, then paste the printed sha256 into ``TINY_SHA256`` in ``rlft/models/tiny.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from rlft import cli
from rlft.errors import UsageError
from rlft.models.cache import cached_build
from rlft.models.muon import Muon
from rlft.models.tiny import TINY_DIR, TINY_SHA256, build_char_tokenizer, sha256_file
from rlft.prefill import output_cache, with_cache

#: Bump when the recipe changes in a way its config fields do not capture.
#: 3: Muon's Newton-Schulz iteration in float32 (was torch.optim.Muon's bfloat16).
TINY_RECIPE_VERSION = 3


@dataclass(frozen=True)
class TinyConfig:
    """The tiny preset's recipe.

    Attributes:
        hidden_size, intermediate_size, num_hidden_layers, num_attention_heads: Llama shape.
        head_dim: width of one attention head. 32, not hidden_size / heads = 16: vLLM's CPU
            attention kernels take head sizes 32, 64, 80, ... but not 16, and the preset must run
            on both rollout engines.
        max_position_embeddings: longest prompt + completion in tokens (characters).
        dataset: the ``rlft.data`` spec of the warm-start problems.
        batch_size: problems per supervised step.
        muon_lr: Muon learning rate for the 2-D hidden weight matrices. Muon reaches the accuracy
            jump about 3x sooner than AdamW here (~450 vs 1500+ steps).
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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and not value > 0:
                raise UsageError(f"--{f.name.replace('_', '-')} must be > 0, got {value}")


def optimizers(model: torch.nn.Module, config: TinyConfig) -> list[torch.optim.Optimizer]:
    """Muon for the hidden weight matrices, AdamW for embeddings (tied with the head) and norms."""
    hidden = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n and "lm_head" not in n]
    ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [
        Muon(hidden, lr=config.muon_lr),
        torch.optim.AdamW(rest, lr=config.lr, betas=(0.9, config.beta2), weight_decay=0.0),
    ]


# ------------------------------------------------------------------------- supervised data
def encode_examples(tokenizer, problems) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, completion ids)`` per problem; the completion is ``" " + answer + EOS``."""
    from rlft.data import format_prompt

    prompts = tokenizer([format_prompt(p.question, tokenizer) for p in problems])["input_ids"]
    answers = tokenizer([" " + p.answer for p in problems], add_special_tokens=False)["input_ids"]
    return [(p, a + [tokenizer.eos_token_id]) for p, a in zip(prompts, answers)]


def common_prefix(examples: list[tuple[list[int], list[int]]]) -> list[int]:
    """The longest token prefix shared by every prompt, minus its last token (kept per row)."""
    prefix = list(examples[0][0])
    for prompt, _ in examples:
        k = 0
        while k < min(len(prefix), len(prompt)) and prefix[k] == prompt[k]:
            k += 1
        prefix = prefix[:k]
    return prefix[:-1]


def supervised_batch(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + completion`` rows [B, L], mask [B, L], labels [B, L] (-100 off the completion)."""
    width = max(len(p) + len(c) for p, c in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (p, c) in enumerate(examples):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p): len(p) + len(c)] = torch.tensor(c)
        mask[i, : len(p) + len(c)] = 1
    return ids, mask, labels


def supervised_loss(model, prefix: list[int], ids, mask, labels) -> torch.Tensor:
    """Mean completion-token cross-entropy; the shared prompt prefix is computed once per batch.

    Every prompt starts with the same tokens (``"<s>Question: What is "``); their hidden states do
    not depend on what follows, so they are computed for one row and the key/value cache is
    repeated over the batch (the full forward's loss and gradients, ~1.7x faster).
    """
    if not prefix:
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    B, L = ids.shape[0], len(prefix)
    cache = output_cache(model(input_ids=torch.tensor([prefix]), use_cache=True))
    cache.batch_repeat_interleave(B)
    logits = model(
        input_ids=ids[:, L:],
        attention_mask=torch.cat([mask.new_ones(B, L), mask[:, L:]], 1),
        position_ids=torch.arange(L, ids.shape[1]).expand(B, -1),
        **with_cache(model, cache),
        use_cache=True,
    ).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, L + 1:].reshape(-1), ignore_index=-100)


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


# ----------------------------------------------------------------------------------- build
def cpu_name() -> str:
    """The CPU model as ``lscpu`` names it, and whether it has AVX-512 (bf16)."""
    name = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    vector = "AVX-512-bf16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else \
        "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({vector})"


def build_tiny(out_dir: Path, config: TinyConfig = TinyConfig(), seed: int = 0, progress: bool = True) -> dict:
    """Build the tiny preset into ``out_dir`` (model, tokenizer, ``build_info.json``); returns the info.

    One CPU thread throughout (also the fastest for this size), float32, seeded.
    """
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
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            model, steps, reached, history = warm_start(tokenizer, llama, config, seed, train, held_out, progress)
            train_seconds = time.perf_counter() - start
            model.eval()
            test_greedy, test_sampled = (
                evaluate_accuracy(model, tokenizer, test, temperature=t, seed=seed, max_new_tokens=config.max_new_tokens)
                for t in (0.0, 1.0))
    finally:
        torch.set_num_threads(threads)
    info = {
        "preset": "tiny",
        "seed": seed,
        "config": asdict(config),
        "recipe_version": TINY_RECIPE_VERSION,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "test_problems": len(test),
        "test_greedy_accuracy": test_greedy,
        "test_sampled_accuracy": test_sampled,
        "reached_target": reached,
        "history": history,
        "cpu": cpu_name(),
        "torch": torch.__version__,
    }
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def warm_start(tokenizer, llama: LlamaConfig, config: TinyConfig, seed: int, train, held_out, progress: bool):
    """Supervised steps until held-out sampled accuracy reaches the target (or ``max_steps``).

    Returns the model, the number of steps taken, whether the target was reached, and the history:
    one record per check (step, loss, held-out sampled accuracy).
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama)
    steppers = optimizers(model, config)
    examples = encode_examples(tokenizer, train)
    prefix = common_prefix(examples)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    history: list[dict] = []
    position = 0
    bar = tqdm(total=config.max_steps, desc="tiny recipe", unit="step", disable=not progress)
    step = 0
    for step in range(1, config.max_steps + 1):
        if position + config.batch_size > len(order):
            position = 0
        ids, mask, labels = supervised_batch(
            [examples[i] for i in order[position: position + config.batch_size]], tokenizer.pad_token_id)
        position += config.batch_size
        model.train()
        loss = supervised_loss(model, prefix, ids, mask, labels)
        for optimizer in steppers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in steppers:
            optimizer.step()
        bar.update()
        fine = bool(history) and history[-1]["heldout_sampled"] >= config.fine_eval_from
        if step % (config.eval_every if fine else config.coarse_eval_every) == 0:
            model.eval()
            sampled = evaluate_accuracy(model, tokenizer, held_out, temperature=1.0, seed=seed + step,
                                        max_new_tokens=config.max_new_tokens)
            history.append({"step": step, "loss": round(loss.item(), 4), "heldout_sampled": sampled})
            bar.set_postfix(loss=f"{loss.item():.3f}", heldout_sampled=f"{sampled:.3f}")
            if sampled >= config.target_sampled_accuracy:
                break
    bar.close()
    reached = bool(history) and history[-1]["heldout_sampled"] >= config.target_sampled_accuracy
    return model, step, reached, history


# ------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, TinyConfig]:
    p = cli.ArgumentParser(prog="python -m rlft.models.tiny_recipe", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and evaluation seed (default 0)")
    for f in dataclasses.fields(TinyConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type={"int": int, "float": float}.get(f.type, str),
                       default=f.default, help=f"TinyConfig.{f.name} (default {f.default})")
    args = p.parse_args(argv)
    config = TinyConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TinyConfig)})
    return args, config


def main(argv: Sequence[str] | None = None) -> dict:
    args, config = parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} already exists and is not an empty folder; choose a new folder")
    if out.exists():
        out.rmdir()
    print(f"tiny recipe v{TINY_RECIPE_VERSION}, seed {args.seed}, into {out}, on {cpu_name()}, torch {torch.__version__}\n"
          "  (the result depends on the CPU: another CPU gives another model; every machine loads the pinned one)",
          flush=True)
    info: dict = {}
    cached_build(out, lambda tmp: info.update(build_tiny(tmp, config, args.seed)))
    out.with_name(out.name + ".lock").unlink(missing_ok=True)  # the build's lock, not part of the model
    checks = info["history"]
    last = f"{checks[-1]['heldout_sampled']:.3f} at step {checks[-1]['step']}" if checks else "never checked"
    verdict = "reached" if info["reached_target"] else "did NOT reach"
    print(f"{verdict} the target after {info['steps']} steps: held-out sampled accuracy {last} "
          f"(target {config.target_sampled_accuracy}, at most {config.max_steps} steps), {info['seconds']:.0f} s")
    print(f"test accuracy on {info['test_problems']} problems: greedy {info['test_greedy_accuracy']:.3f}, "
          f"sampled {info['test_sampled_accuracy']:.3f}")
    digests = {path.name: sha256_file(path) for path in sorted(out.iterdir())}
    same = digests == TINY_SHA256
    print("identical to the pinned model in " + str(TINY_DIR) if same else
          f"differs from the pinned model in {TINY_DIR} (expected on another CPU or with other settings); "
          "to pin this build, copy the folder there and set rlft/models/tiny.py's TINY_SHA256 to:")
    if not same:
        print("TINY_SHA256 = {\n" + "".join(f'    "{k}": "{v}",\n' for k, v in digests.items()) + "}")
    return info


if __name__ == "__main__":
    cli.run(main)
