"""Reads MV-FractalDB shards with the webdataset package and checks them against the folder output.

usage: read_mvfdb.py SHARD_DIR FOLDER_DIR EXPECTED_SAMPLES
Every (class, model, view) once, its PNG bytes equal to the folder's file, its .cls the class.
"""
import glob
import json
import os
import sys

import webdataset as wds

shards, folder, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
urls = sorted(glob.glob(os.path.join(shards, "mvfdb-*.tar")))
assert urls, "no shards"
seen = set()
classes = set()
for s in wds.WebDataset(urls, shardshuffle=False):
    meta = json.loads(s["json"])
    key = (meta["class_index"], meta["model"], meta["view"])
    assert key not in seen, f"{key} twice"
    seen.add(key)
    assert int(s["cls"]) == meta["class_index"], s["__key__"]
    assert s["png"] == open(os.path.join(folder, meta["file"]), "rb").read(), meta["file"]
    classes.add(meta["class_index"])
assert len(seen) == expected, (len(seen), expected)
print(f"{len(seen)} samples of {len(classes)} classes, each once, equal to the folder images")
