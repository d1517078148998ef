"""Reads RCDB shards with the webdataset package and checks them against the same run's folders.

usage: read_rcdb.py SHARD_DIR FOLDER_DIR CLASSES INSTANCES
Every (class, instance) must appear exactly once, its PNG bytes equal to the folder's
image/{class}/{class}_{instance}.png, its .cls the class index; prints the sample count.
"""
import glob
import os
import sys

import webdataset as wds

shards, folder, classes, instances = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
urls = sorted(glob.glob(os.path.join(shards, "rcdb-*.tar")))
assert urls, "no shards"
seen = set()
for s in wds.WebDataset(urls, shardshuffle=False):
    meta = __import__("json").loads(s["json"])
    key = (meta["class_index"], meta["instance"])
    assert key not in seen, f"{key} twice"
    seen.add(key)
    assert int(s["cls"]) == meta["class_index"], s["__key__"]
    want = open(os.path.join(folder, meta["file"]), "rb").read()
    assert s["png"] == want, f"{meta['file']}: shard bytes differ from the folder's"
assert len(seen) == classes * instances, f"{len(seen)} samples, want {classes * instances}"
print(f"{len(seen)} samples, each once, equal to the folder images")
