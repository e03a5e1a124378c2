"""Model file for the minilm archive: all-MiniLM-L6-v2 sentence embeddings, one class."""

from torchserve_cpu.model_store.architectures.bert import SentenceEmbedder


class MiniLMEmbedder(SentenceEmbedder):
    pass
