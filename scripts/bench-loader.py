#!/usr/bin/env python3
"""The loader side of an encoding: Python webdataset reading .png against .npy shards of one dataset.

usage: scripts/bench-loader.py [--classes N] [--size S] [--repeat R] [--bin PATH] [--workdir DIR]

Writes one FractalDB dataset (patch_gray, --classes classes of tests/fixtures/reference/categories,
3 weight rows, 10 instances, 4 flips, S x S) twice with the release binary, as PNG and as npy shards,
then reads each R times with webdataset (.decode("l") for PNG, which gives the same H x W uint8
arrays as the npy samples; .decode() for npy) in one process, and prints samples/s (best of R) and
bytes per sample (the tar files over the samples).
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import webdataset

p = argparse.ArgumentParser()
p.add_argument("--classes", type=int, default=20)
p.add_argument("--size", type=int, default=224)
p.add_argument("--repeat", type=int, default=3)
p.add_argument("--bin", default="target/release/fractaldb")
p.add_argument("--workdir")
a = p.parse_args()
work = a.workdir or tempfile.mkdtemp(prefix="bench-loader-")
cats = sorted(glob.glob("tests/fixtures/reference/categories/*.csv"))[: a.classes]
load = os.path.join(work, "classes")
os.makedirs(load, exist_ok=True)
for c in cats:
    dst = os.path.join(load, os.path.basename(c))
    if not os.path.exists(dst):
        os.symlink(os.path.abspath(c), dst)
for enc in ("png", "npy"):
    out = os.path.join(work, enc)
    if not os.path.exists(os.path.join(out, "fractaldb-manifest.json")):
        subprocess.run(
            [a.bin, "render", "-q", "--backend", "cpu", "--load-root", load, "--out", out,
             "--format", "wds", "--samples-per-shard", "1000", "--weight-rows", "0-2",
             "--image-size-x", str(a.size), "--image-size-y", str(a.size),
             "--encoding", enc],
            check=True,
        )
rows = []
for enc, decode in (("png", "l"), ("npy", None)):
    urls = sorted(glob.glob(os.path.join(work, enc, "*.tar")))
    size = sum(os.path.getsize(u) for u in urls)
    best = 0.0
    for _ in range(a.repeat):
        ds = webdataset.WebDataset(urls, shardshuffle=False)
        ds = ds.decode(decode) if decode else ds.decode()
        t0 = time.perf_counter()
        n = 0
        for s in ds:
            assert s[enc].shape == (a.size, a.size), s[enc].shape
            n += 1
        best = max(best, n / (time.perf_counter() - t0))
    rows.append((enc, n, best, size / n))
print(f"webdataset {webdataset.__version__ if hasattr(webdataset, '__version__') else ''}, "
      f"python {sys.version.split()[0]}, {a.size}x{a.size} patch_gray, {os.cpu_count()} CPUs")
print("encoding  samples  samples/s  bytes/sample")
for enc, n, rate, per in rows:
    print(f"{enc:8s}  {n:7d}  {rate:9.0f}  {per:12.0f}")
