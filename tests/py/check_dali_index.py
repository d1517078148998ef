"""Checks DALI wds2idx index files against the data offsets that Python's tarfile reports.

usage: check_dali_index.py SHARD.tar SHARD.idx
"""
import sys
import tarfile

tar_path, idx_path = sys.argv[1], sys.argv[2]
with tarfile.open(tar_path) as t:
    entries = []
    for m in t.getmembers():
        if m.isreg():
            entries.append((m.name.split(".", 1)[1], m.offset_data, m.size, m.name))
lines = open(idx_path).read().split("\n")
assert lines[-1] == "", "index ends with a newline"
head, body = lines[0], lines[1:-1]
version, count = head.split(" ")
assert version == "v1.2" and int(count) == len(body) == len(entries) // 3, (head, len(body), len(entries))
flat = []
for line in body:
    f = line.split(" ")
    assert len(f) % 4 == 0
    for i in range(0, len(f), 4):
        flat.append((f[i], int(f[i + 1]), int(f[i + 2]), f[i + 3]))
assert flat == entries, (flat[:3], entries[:3])
data = open(tar_path, "rb").read()
for ext, off, size, name in flat:
    with tarfile.open(tar_path) as t:
        assert t.extractfile(name).read() == data[off:off + size], name
print("ok", len(body))
