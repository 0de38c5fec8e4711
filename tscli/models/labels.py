"""Class names written into the exported file's metadata, so the runtime can print labels
without timm or any download."""

from __future__ import annotations


def label_names(labels: str, num_classes: int) -> list[str]:
    if labels == "imagenet-1k" and num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        # The first synonym is the common name ("tabby" for "tabby, tabby cat").
        return [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]
    if labels.startswith("digits") and num_classes == 10:
        return [str(i) for i in range(10)]
    return [f"class {i}" for i in range(num_classes)]
