"""LoRA through peft: train low-rank adapters on frozen weights (Hu et al. 2021, arXiv 2106.09685).

    python -m rlft.train --algo agro --lora r=16,alpha=32,targets=q_proj,v_proj ...
    python -m rlft.train --algo agro --lora r=16                  # every linear layer (peft's all-linear)

Every adapted linear layer computes ``W x + (alpha / r) * B A x`` with ``W`` [out, in] frozen,
``A`` [r, in] and ``B`` [out, r] trained (``B`` starts at 0, so the policy starts as pi_ref). Only
the adapters (and PPO's value head) are trained and held by AdamW.

* pi_ref is the same model with the adapters disabled: a second module tree over the SAME frozen
  weight tensors (:func:`reference_view`), without the adapters; no second copy of the weights.
* The policy is peft's model with the adapters injected in place (``get_base_model()``: the
  transformers model, whose forward includes them), so the HF engine samples from it directly.
* Engines with their own weights (vLLM, ``stale:K``) receive merged weights,
  ``W + (alpha / r) B A`` under the plain model's names (:func:`merged_state_dict`).
* Checkpoints are normal peft folders (``adapter_config.json``, ``adapter_model.safetensors``):
  ``peft.PeftModel.from_pretrained(base_model, "OUT/checkpoint")``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from rlft.errors import UsageError

#: The adapter name peft gives a model's first adapter.
ADAPTER = "default"


@dataclass(frozen=True)
class LoraSettings:
    """The ``--lora`` settings: rank ``r``, scale ``alpha`` (the update is ``alpha / r * B A``), target
    modules (``all-linear``, or names such as ``q_proj``) and dropout on the adapters' input."""

    r: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = ("all-linear",)
    dropout: float = 0.0


def parse_lora(spec: str) -> LoraSettings:
    """``"r=16,alpha=32,targets=q_proj,v_proj"`` -> :class:`LoraSettings`; a comma-separated item
    without ``=`` continues the list of ``targets``. One-line :class:`UsageError` on bad input."""
    values: dict[str, list[str]] = {}
    key = None
    for item in (part.strip() for part in spec.split(",")):
        name, sep, value = item.partition("=")
        if sep:
            key = name.strip()
            values.setdefault(key, []).append(value.strip())
        elif key == "targets" and item:
            values[key].append(item)
        else:
            raise UsageError(f"--lora {spec!r}: {item!r} is not KEY=VALUE; e.g. --lora r=16,alpha=32,targets=q_proj,v_proj")
    unknown = set(values) - {"r", "alpha", "targets", "dropout"}
    if unknown:
        raise UsageError(f"--lora {spec!r}: unknown key(s) {', '.join(sorted(unknown))}; use r, alpha, targets, dropout")
    try:
        r = int(values.get("r", ["16"])[0])
        alpha = float(values.get("alpha", [str(2 * r)])[0])
        dropout = float(values.get("dropout", ["0"])[0])
    except ValueError:
        raise UsageError(f"--lora {spec!r}: r must be an integer, alpha and dropout numbers") from None
    if r < 1 or not alpha > 0 or not 0 <= dropout < 1:
        raise UsageError(f"--lora {spec!r}: needs r >= 1, alpha > 0 and 0 <= dropout < 1")
    return LoraSettings(r=r, alpha=alpha, targets=tuple(values.get("targets", ["all-linear"])), dropout=dropout)


def reference_view(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree whose parameters and buffers ARE ``model``'s tensors (no new
    weight memory). Made before the adapters are injected, it is the model without them: pi_ref,
    as long as the shared weights stay frozen (they do under LoRA)."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo=shared).eval().requires_grad_(False)


def add_adapters(model: nn.Module, settings: LoraSettings):
    """Inject LoRA adapters into ``model`` in place and freeze everything else; returns peft's
    ``PeftModel`` (its ``get_base_model()`` is ``model``, now with adapters)."""
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if settings.targets == ("all-linear",) else list(settings.targets)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, target_modules=targets,
                        lora_dropout=settings.dropout, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft 0.21 asks transformers 5 for a deprecated attribute
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            return get_peft_model(model, config)
        except ValueError as exc:  # e.g. a target module the model does not have
            raise UsageError(f"--lora: {exc}".splitlines()[0]) from None


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The plain model's ``state_dict()`` with every adapted weight merged: ``W + (alpha / r) B A``
    under ``W``'s own name (``...q_proj.weight``, not ``...q_proj.base_layer.weight``); other
    tensors are the model's own (not copied). ``model`` is the one :func:`add_adapters` adapted."""
    from peft.tuners.lora import LoraLayer

    merged: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        merged[name.replace(".base_layer.", ".")] = tensor
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in getattr(module, "lora_A", {}):
            weight = module.get_base_layer().weight
            merged[f"{name}.weight"] = (weight + module.get_delta_weight(ADAPTER)).detach()
    return merged


def save_adapters(peft_model, folder: Path) -> None:
    """Write the adapters as a peft folder (``adapter_config.json``, ``adapter_model.safetensors``)."""
    peft_model.save_pretrained(str(folder))


def load_adapters(peft_model, folder: Path) -> None:
    """Load the adapter weights of a folder :func:`save_adapters` wrote into ``peft_model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(peft_model, load_file(str(folder / "adapter_model.safetensors")))
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise UsageError(f"{folder}: adapter weights {unexpected[:3]} do not fit this model's adapters; "
                         "resume with the same --lora settings")


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates (all of them, except the frozen weights under LoRA)."""
    return [p for p in module.parameters() if p.requires_grad]
