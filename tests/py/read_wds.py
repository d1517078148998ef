"""Reads fractaldb WebDataset shards with readers we did not write (webdataset, tarfile, PIL) and
compares every image with the folder output of the same settings.

usage: read_wds.py SHARD_DIR PREFIX FOLDER_DIR EXPECTED_SAMPLES
"""
import glob
import io
import json
import os
import sys
import tarfile

import numpy as np
import webdataset as wds
from PIL import Image

shard_dir, prefix, folder, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
shards = sorted(glob.glob(os.path.join(shard_dir, f"{prefix}-*.tar")))
assert shards, "no shards"

# tarfile: headers, order, contiguity
keys = []
for s in shards:
    with tarfile.open(s) as t:
        members = t.getmembers()
        assert len(members) % 3 == 0, s
        for i in range(0, len(members), 3):
            trio = members[i:i + 3]
            key = trio[0].name.split(".", 1)[0]
            assert [m.name for m in trio] == [f"{key}.cls", f"{key}.json", f"{key}.png"], [m.name for m in trio]
            for m in trio:
                assert m.isreg() and m.mode == 0o444 and m.uid == 0 and m.gid == 0 and m.mtime == 0, m.name
                assert len(m.name.encode()) <= 100 and "." not in key
            keys.append(key)
assert len(keys) == len(set(keys)) == expected, (len(keys), len(set(keys)), expected)

# wids: its index (the nsamples per shard) and its mmap tar reader, which reads only the 100-byte name
# field of each header. wids/__init__ imports torch, so load just its tar module from the package.
import importlib.util
import site

mm_path = next(
    os.path.join(d, "wids", "wids_mmtar.py")
    for d in site.getsitepackages() + [site.getusersitepackages()]
    if os.path.exists(os.path.join(d, "wids", "wids_mmtar.py"))
)
spec = importlib.util.spec_from_file_location("wids_mmtar", mm_path)
wids_mmtar = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wids_mmtar)
index = json.load(open(os.path.join(shard_dir, f"{prefix}-wids.json")))
assert index["__kind__"] == "wids-shard-index-v1"
assert [e["url"] for e in index["shardlist"]] == [os.path.basename(s) for s in shards]
for entry, s in zip(index["shardlist"], shards):
    mt = wids_mmtar.MMIndexedTar(s)
    names = list(mt.names())
    assert len(names) == 3 * entry["nsamples"], (s, len(names), entry["nsamples"])
    with tarfile.open(s) as t:
        for name in names[:9]:
            _, data = mt.get_by_name(name)
            assert bytes(data) == t.extractfile(name).read(), (s, name)
assert keys == sorted(keys), "samples are in position order"

# webdataset: decode and compare with the folder layout
ds = wds.WebDataset(shards, shardshuffle=False, empty_check=True).decode("rgb8")
n = 0
classes_per_shard = {}
for sample in ds:
    meta = sample["json"]
    assert sample["cls"] == meta["class_index"], (sample["cls"], meta)
    name = meta["class"]
    path = os.path.join(folder, name, f"{name}_{meta['weight_row']:02d}_count_{meta['instance']}_flip{meta['flip']}.png")
    ref = np.array(Image.open(path).convert("RGB"))
    got = sample["png"]
    assert got.shape == ref.shape and (got == ref).all(), path
    classes_per_shard.setdefault(sample["__url__"], set()).add(name)
    n += 1
assert n == expected, (n, expected)
print(json.dumps({"samples": n, "shards": len(shards), "classes_per_shard": {os.path.basename(k): len(v) for k, v in classes_per_shard.items()}}))
