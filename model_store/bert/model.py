"""Model file for the bert archive: BERT-base sequence classification, one class."""

from torchserve_cpu.model_store.architectures.bert import BertClassifier


class BertBaseClassifier(BertClassifier):
    pass
