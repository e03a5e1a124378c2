"""BERT models built from transformers' BertModel with tensor-only forward signatures.

A tensor-in, tensor-out forward is what torch.jit.trace and torch.compile want; the
Hugging Face output objects are unwrapped here, once.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

# all-MiniLM-L6-v2's config.json, so the model is built without reading a hub.
MINILM_CONFIG = {
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_attention_heads": 12,
    "num_hidden_layers": 6,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
}


def first_output(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor) -> torch.Tensor:
    """The first tensor of a Hugging Face model's tuple output."""
    output = model(input_ids=input_ids, attention_mask=attention_mask,
                   token_type_ids=token_type_ids, return_dict=False)
    return output[0]


class BertClassifier(nn.Module):
    """BERT-base sequence classification (transformers' BertConfig() defaults, 2 labels)."""

    def __init__(self, config: BertConfig | None = None) -> None:
        super().__init__()
        self.model = BertForSequenceClassification(config or BertConfig())

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return first_output(self.model, input_ids, attention_mask, token_type_ids)


class SentenceEmbedder(nn.Module):
    """BertModel + attention-masked mean pooling + L2 norm (sentence-transformers' recipe)."""

    def __init__(self, config: BertConfig | None = None) -> None:
        super().__init__()
        self.bert = BertModel(config or BertConfig(**MINILM_CONFIG), add_pooling_layer=False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = first_output(self.bert, input_ids, attention_mask, token_type_ids)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)
