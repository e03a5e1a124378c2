"""Model file for the efficientnet_lite0 archive: ImageNet EfficientNet-Lite0, one class."""

from torchserve_cpu.model_store.architectures.efficientnet_lite import EfficientNetLite0


class EfficientNetLite0Classifier(EfficientNetLite0):
    pass
