"""Reads a running fractaldb service with clients we did not write: webdataset by URL (it fetches
with curl), wids with the served index, fsspec's HTTP filesystem (size, ranged reads), timm's
WebDataset reader (the served `_info.json`), Hugging Face `datasets` (the shards by URL, class names
from the served dataset card), and the Prometheus text parser on /metrics; prints a JSON summary
(samples read, shards listed, metric names).

usage: read_served.py BASE_URL PREFIX SHARDS
"""
import importlib.util
import io
import json
import os
import site
import sys
import urllib.request

import webdataset as wds
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

base, prefix, shards = sys.argv[1], sys.argv[2], int(sys.argv[3])
urls = f"{base}/{prefix}-{{000000..{shards - 1:06d}}}.tar"
n = 0
for sample in wds.WebDataset(urls, shardshuffle=False):
    img = Image.open(io.BytesIO(sample["png"]))
    img.load()
    meta = json.loads(sample["json"])
    assert int(sample["cls"]) == meta["class_index"]
    n += 1

index = json.load(urllib.request.urlopen(f"{base}/{prefix}-wids.json"))
assert index["__kind__"] == "wids-shard-index-v1"
assert all(e["url"].startswith(base + "/") for e in index["shardlist"])
# wids' own reader of a remote index (load_dsdesc_and_resolve fetches the URL and resolves the
# shard list). The wids package's __init__ imports torch: register the package without running it.
import types

pkg_dir = next(
    os.path.join(d, "wids")
    for d in site.getsitepackages() + [site.getusersitepackages()]
    if os.path.exists(os.path.join(d, "wids", "wids_specs.py"))
)
pkg = types.ModuleType("wids")
pkg.__path__ = [pkg_dir]
sys.modules["wids"] = pkg
from wids import wids_specs  # noqa: E402

listed = wids_specs.load_dsdesc_and_resolve(f"{base}/{prefix}-wids.json")["shardlist"]
assert sum(e["nsamples"] for e in listed) == n, (sum(e["nsamples"] for e in listed), n)
# Every listed URL is served (read the first bytes of each).
for e in listed:
    head = urllib.request.urlopen(e["url"]).read(512)
    assert head[257:262] == b"ustar", e["url"]

# fsspec's HTTP filesystem: HEAD's size, ranged reads (206) through its file object.
import fsspec  # noqa: E402

fs = fsspec.filesystem("http")
url = f"{base}/{prefix}-000000.tar"
whole = urllib.request.urlopen(url).read()
assert fs.size(url) == len(whole), (fs.size(url), len(whole))
assert fs.cat_file(url, start=100, end=1100) == whole[100:1100]
with fs.open(url, "rb", block_size=4096) as f:
    f.seek(2000)
    assert f.read(3000) == whole[2000:5000]

# timm reads the served shards by their _info.json.
import timm.data  # noqa: E402

ds = timm.data.create_dataset(f"wds/{prefix}", root=base, split="train", is_training=False)
assert len(ds) == n, (len(ds), n)
timm_seen = sum(1 for _ in ds)
assert timm_seen == n, (timm_seen, n)

# Hugging Face datasets reads the served shards by URL; the served dataset card names the classes.
import tempfile  # noqa: E402

os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp())
import datasets  # noqa: E402
import yaml  # noqa: E402

card = urllib.request.urlopen(f"{base}/README.md").read().decode()
features = datasets.Features._from_yaml_list(yaml.safe_load(card.split("---")[1])["dataset_info"]["features"])
urls = [e["url"] for e in listed]
hf = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train")
hf = hf.cast_column("cls", features["cls"])
assert len(hf) == n, (len(hf), n)
manifest = json.load(urllib.request.urlopen(f"{base}/manifest.json"))
assert hf.features["cls"].names == manifest["classes"]
assert hf.features["cls"].int2str(hf[0]["cls"]) == hf[0]["json"]["class"]

metrics = urllib.request.urlopen(f"{base}/metrics").read().decode()
names = sorted(f.name for f in text_string_to_metric_families(metrics))
print(json.dumps({"samples": n, "shards": len(listed), "metrics": names}))
