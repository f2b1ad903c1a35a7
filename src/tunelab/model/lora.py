"""LoRA adapters from PEFT, injected into a backbone (never a subclass of it), and parameter counts.

The base weights stay frozen. Used by both tasks: the classifier's trainable policy
(`tunelab.classify.model.apply_trainable`) and SFT's `train.trainable: lora`.
"""

from __future__ import annotations

import warnings

from torch import nn

from tunelab.errors import TunelabError


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def inject_lora(backbone: nn.Module, r: int, alpha: float, dropout: float, target_modules, task_type: str | None = None) -> nn.Module:
    """Wrap the backbone with PEFT LoRA adapters; returns the PeftModel (base weights frozen).
    task_type "CAUSAL_LM" for SFT (a PeftModelForCausalLM, recorded in adapter_config.json)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none", task_type=task_type)
    with warnings.catch_warnings():  # PEFT reads a property that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            return get_peft_model(backbone, config)
        except ValueError as err:  # PEFT: "Target modules {...} not found in the base model"
            if "not found" not in str(err) and "target" not in str(err).lower():
                raise
            names = sorted({name.rsplit(".", 1)[-1] for name, m in backbone.named_modules() if isinstance(m, nn.Linear)})
            raise TunelabError(f"model.lora.target_modules = {target_modules!r} matches no layer of this model; "
                               f"its linear layers are named {', '.join(names)} (or use all-linear)") from None
