"""Which parameters train: the head only, the last N blocks, everything, or LoRA adapters.

The head always trains in full. With LoRA, PEFT injects adapters into the backbone (never a
subclass of it); the backbone's own weights stay frozen. Frozen lower layers cost no backward
pass: autograd builds the graph only from the first trainable block on.
"""

from __future__ import annotations

import warnings

from torch import nn

from tunelab.model.backbone import final_norm, transformer_blocks
from tunelab.model.classifier import TextClassifier


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
        return get_peft_model(backbone, config)


def apply_trainable(model: TextClassifier, policy: str, last_blocks: int = 2, lora=None) -> dict:
    """Freeze or unfreeze parts of `model` in place according to `policy`; return a summary."""
    if policy == "lora":
        model.backbone = inject_lora(model.backbone, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    else:
        for p in model.backbone.parameters():
            p.requires_grad = policy == "all"
        if policy == "last_blocks":
            blocks = transformer_blocks(model.backbone)
            if last_blocks > len(blocks):
                from tunelab.errors import TunelabError

                raise TunelabError(f"model.last_blocks = {last_blocks} but the model has only {len(blocks)} blocks")
            for block in list(blocks)[-last_blocks:]:
                for p in block.parameters():
                    p.requires_grad = True
            norm = final_norm(model.backbone)
            if norm is not None:
                for p in norm.parameters():
                    p.requires_grad = True
        elif policy not in ("head", "all"):
            raise ValueError(f"unknown trainable policy {policy!r}")
    for p in model.head.parameters():
        p.requires_grad = True
    trainable, total = count_parameters(model)
    return {"policy": policy, "trainable_params": trainable, "total_params": total}
