"""Model file for the resnet50 archive: exactly one class, as TorchServe requires."""

from torchserve_cpu.model_store.architectures.resnet import ResNet


class ResNet50(ResNet):
    def __init__(self) -> None:
        super().__init__(blocks=(3, 4, 6, 3), num_classes=1000)
