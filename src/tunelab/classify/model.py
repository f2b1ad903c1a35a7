"""A text classifier: pretrained backbone -> pooled vector (-> dense + tanh) -> linear class head.

The model owns its choices: which token is pooled and whether a decoder attends causally. The
training loop only calls `model(input_ids, attention_mask)` and gets logits (num_sequences, C).
Packed, padding-free batches (`collate.PackingCollator`) come as
`model(input_ids, None, segment_ids=..., position_ids=...)`, one row of several examples: the
backbone gets the positions and the per-example attention isolation its family needs (decided
once per model as `TextClassifier.packing_plan`, see classify/packing.py) and each example pools
its own tokens: the same logits as the padded batch.
`apply_trainable` picks what trains: the head only, the last N blocks, everything, or LoRA; the
head (with the pooler's dense layer) always trains in full. Frozen lower layers cost no backward
pass: autograd builds the graph only from the first trainable block on; they cost no forward pass
after the first either when the run caches their output (`frozen_states`, classify/frozen_cache.py).
For decoders the head has no bias, like `score` in transformers' *ForSequenceClassification, so
that a decoder with last-token pooling exports to that class unchanged (classify/export.py
decides which runs do, and says why the others do not).
Encoders may also pool `pooler`: the first token -> a dense layer (hidden -> hidden) -> tanh ->
dropout -> the linear head, the head that BERT's, ALBERT's, RoBERTa's and MPNet's stock
*ForSequenceClassification classes compute, so such a run exports to them. The dense layer
(`pooler_dense`) starts from the backbone's pretrained pooler where the stock class uses that
pooler (BERT, ALBERT; `PRETRAINED_POOLER`), else fresh (seeded, like the head); it trains whenever
the head does. Decoders have no such head in transformers and refuse it.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.classify.frozen_cache import skip_frozen
from tunelab.classify.packing import packed_backbone_inputs, packing_plan
from tunelab.classify.pooling import pool
from tunelab.errors import TunelabError
from tunelab.model.backbone import ENCODER_TYPES, final_norm, hidden_size, is_encoder, set_causal, transformer_blocks
from tunelab.model.lora import count_parameters, inject_lora

# Where the backbone keeps the pretrained pooler dense layer (dense + tanh on the first token) that
# the family's stock *ForSequenceClassification class feeds its classifier: BertModel.pooler.dense,
# AlbertModel.pooler. RoBERTa, XLM-R, CamemBERT and MPNet backbones carry a pooler too, but their
# stock classes drop it and start a fresh `classifier.dense`, so `pooling: pooler` does the same.
PRETRAINED_POOLER = {"bert": "pooler.dense", "albert": "pooler"}


def pooling_problem(pooling: str, model_type: str) -> str | None:
    """Why `model.pooling` cannot be used with a backbone of `model_type`, or None (train and
    `tunelab validate` say the same).

    >>> pooling_problem("pooler", "bert") is None, pooling_problem("pooler", "llama").split(";")[1]
    (True, ' llama is a decoder, use model.pooling: last (or mean)')
    """
    if pooling == "pooler" and model_type not in ENCODER_TYPES:
        return (f"model.pooling = pooler is for encoders (BERT, RoBERTa, MPNet, ...): a dense + tanh layer on the first "
                f"token; {model_type or 'this model'} is a decoder, use model.pooling: last (or mean)")
    return None


def model_section_problem(model_cfg, model_type: str) -> str | None:
    """What a classification run's `model` section asks of a backbone of `model_type` that it
    cannot give, or None: `tunelab validate`'s check, before any weights load."""
    return pooling_problem(model_cfg.pooling, model_type)


def pretrained_pooler(backbone: nn.Module) -> nn.Linear | None:
    """The backbone's pretrained pooler dense layer (see PRETRAINED_POOLER), or None."""
    path = PRETRAINED_POOLER.get(getattr(backbone.config, "model_type", ""))
    try:
        module = backbone.get_submodule(path) if path is not None else None
    except AttributeError:  # a backbone built without its pooling layer
        module = None
    return module if isinstance(module, nn.Linear) and module.in_features == module.out_features else None


class TextClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "last", causal_mask: bool = True, head_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.encoder = is_encoder(backbone.config)
        if problem := pooling_problem(pooling, getattr(backbone.config, "model_type", "")):
            raise TunelabError(problem)
        self.token_pooling = "first" if pooling == "pooler" else pooling  # which token(s) `pool` picks
        self.causal_mask = causal_mask
        if not self.encoder:
            set_causal(backbone, causal_mask)
        self.packing_plan = packing_plan(backbone, causal_mask)  # made before LoRA wraps the backbone
        self.frozen_blocks = 0  # blocks[:frozen_blocks] never train (set by apply_trainable)
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden_size(backbone.config), num_labels, bias=self.encoder)
        std = getattr(backbone.config, "initializer_range", 0.02)
        nn.init.normal_(self.head.weight, std=std)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)
        self.pooler_dense = None  # pooling pooler: first token -> pooler_dense -> tanh -> dropout -> head
        if pooling == "pooler":
            width = hidden_size(backbone.config)
            self.pooler_dense = nn.Linear(width, width)
            source = pretrained_pooler(backbone)
            with torch.no_grad():
                if source is not None:
                    self.pooler_dense.weight.copy_(source.weight)
                    self.pooler_dense.bias.copy_(source.bias)
                else:  # after the head, so a pooler run's head starts as a `first` run's does
                    nn.init.normal_(self.pooler_dense.weight, std=std)
                    nn.init.zeros_(self.pooler_dense.bias)

    def head_modules(self) -> list[nn.Module]:
        """What sits after the backbone and always trains in full: the head, and the pooler's dense layer."""
        return [self.head] + ([self.pooler_dense] if self.pooler_dense is not None else [])

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cu_seq_lens: torch.Tensor | None = None, max_length: int | None = None,
                frozen_states: torch.Tensor | None = None, num_sequences: int | None = None) -> torch.Tensor:
        """Padded: input_ids, attention_mask (B, T); segment_ids (B, T), optional: 0 = pad, k = k-th
        sequence of the row (defaults to the attention mask: one sequence per row).
        Packed: attention_mask None, segment_ids and position_ids (B, T) from `PackingCollator`
        (positions restart at 0 per example); attention stays inside each example. cu_seq_lens and
        max_length (from the collator) are the example boundaries varlen attention reads.
        frozen_states (B, T, H), padded only: the hidden states entering block `frozen_blocks`,
        from the frozen-prefix cache; the blocks below are skipped, the rest runs as usual.
        num_sequences, when known (fixed-shape packed rows): pooling then reads nothing back from the GPU.
        Returns logits (num_sequences, num_labels) in float32."""
        if attention_mask is None:
            if segment_ids is None or position_ids is None:
                raise ValueError("without an attention_mask, pass the packed layout: segment_ids and position_ids")
            if frozen_states is not None:
                raise ValueError("frozen_states come with padded batches (an attention_mask), not packed rows")
            attention = getattr(self.backbone.config, "_attn_implementation", None) or "eager"
            if not self.packing_plan.problem and attention != self.packing_plan.attention:
                raise ValueError(f"attention implementation changed to {attention!r} after the packing plan was made for {self.packing_plan.attention!r}")
            dtype = self.backbone.get_input_embeddings().weight.dtype  # of an additive (eager) mask
            out = self.backbone(input_ids=input_ids, **packed_backbone_inputs(self.packing_plan, segment_ids, position_ids, dtype, cu_seq_lens, max_length))
            segments = segment_ids
        else:
            extra = {}
            if not self.encoder:
                # Positions count real tokens only, so left padding does not shift them (B, T).
                extra = {"use_cache": False, "position_ids": (attention_mask.long().cumsum(-1) - 1).clamp(min=0)}
            if frozen_states is None:
                out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
            else:
                with skip_frozen(self.backbone, self.frozen_blocks, frozen_states):
                    out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
            segments = attention_mask if segment_ids is None else segment_ids
        hidden = out.last_hidden_state  # (B, T, H)
        pooled = pool(hidden, segments, self.token_pooling, num_sequences).to(self.head.weight.dtype)  # (N, H): only the pooled positions reach the head
        if self.pooler_dense is not None:
            pooled = torch.tanh(self.pooler_dense(pooled))
        return self.head(self.dropout(pooled)).float()  # (N, C)


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
                raise TunelabError(f"model.last_blocks = {last_blocks} but the model has only {len(blocks)} blocks")
            model.frozen_blocks = len(blocks) - last_blocks
            for block in list(blocks)[-last_blocks:]:
                for p in block.parameters():
                    p.requires_grad = True
            norm = final_norm(model.backbone)
            if norm is not None:
                for p in norm.parameters():
                    p.requires_grad = True
        elif policy == "head":
            model.frozen_blocks = len(transformer_blocks(model.backbone))
        elif policy != "all":
            raise ValueError(f"unknown trainable policy {policy!r}")
    for module in model.head_modules():
        for p in module.parameters():
            p.requires_grad = True
    trainable, total = count_parameters(model)
    return {"policy": policy, "trainable_params": trainable, "total_params": total}
