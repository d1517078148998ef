"""Reads every shard with Python's tarfile and reports the class mix: the fewest classes any shard
holds, and the largest share of one class in one shard divided by the fair share 1/classes.

usage: class_mix.py SHARD_DIR PREFIX CLASSES
"""
import collections
import glob
import json
import os
import sys
import tarfile

shard_dir, prefix, classes = sys.argv[1], sys.argv[2], int(sys.argv[3])
shards = sorted(glob.glob(os.path.join(shard_dir, f"{prefix}-*.tar")))
min_classes, max_ratio, samples = classes, 0.0, 0
for s in shards:
    counts = collections.Counter()
    with tarfile.open(s) as t:
        for m in t:
            if m.name.endswith(".cls"):
                counts[int(t.extractfile(m).read())] += 1
    n = sum(counts.values())
    samples += n
    min_classes = min(min_classes, len(counts))
    max_ratio = max(max_ratio, max(counts.values()) / n * classes)
print(json.dumps({"shards": len(shards), "samples": samples, "min_classes": min_classes,
                  "max_share_over_fair": max_ratio}))
