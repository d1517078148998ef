"""Reads a finalized shard directory with the readers users load data with, which we did not write:
timm's WebDataset reader (`create_dataset("wds/PREFIX")`, which needs `_info.json`, and a
DataLoader batch), Hugging Face `datasets` (`load_dataset(DIR)`, whose dataset card must make `cls`
a ClassLabel with the names of classes.txt). Prints a JSON summary.

usage: read_readers.py DIR PREFIX TOTAL
"""
import json
import os
import sys
import tempfile

root, prefix, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
cache = tempfile.mkdtemp()
os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=cache, HF_HOME=cache)

import datasets  # noqa: E402
import timm.data  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402

names = open(os.path.join(root, "classes.txt")).read().split()

# timm: the split and its size come from _info.json.
ds = timm.data.create_dataset(f"wds/{prefix}", root=root, split="train", is_training=False, batch_size=8)
ds.transform = T.PILToTensor()
assert len(ds) == total, (len(ds), total)
images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
assert images.dtype == torch.uint8 and images.shape[0] == 8 and images.shape[1] == 3, images.shape
assert all(0 <= int(y) < len(names) for y in labels)
timm_seen = sum(1 for _ in ds)

# Hugging Face datasets: the card's features.
hf = datasets.load_dataset(root, split="train")
cls = hf.features["cls"]
assert isinstance(cls, datasets.ClassLabel), hf.features
assert cls.names == names, (cls.names, names)
assert len(hf) == total, (len(hf), total)
row = hf[0]
assert cls.int2str(row["cls"]) == row["json"]["class"], row["json"]
assert row["json"]["class_index"] == row["cls"]
print(json.dumps({
    "timm_batch": list(images.shape), "timm_samples": timm_seen, "hf_rows": len(hf),
    "hf_classes": len(cls.names), "hf_json_fields": sorted(row["json"]), "image_size": list(row["png"].size),
}))
