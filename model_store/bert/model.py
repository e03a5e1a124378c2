"""Model file for the bert archive: BERT-base sequence classification, one class."""

from model_store.architectures.bert import BertClassifier


class BertBaseClassifier(BertClassifier):
    pass
