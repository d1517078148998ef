"""Reads an .npy dataset back with readers we did not write and compares it with the PNG one.

usage: npy_equal.py PNG_FOLDER NPY_FOLDER PNG_SHARD_DIR NPY_SHARD_DIR

Folders: every .png has an .npy beside it in the other tree (numpy.load), with the same pixels
(H x W for gray images, H x W x 3 for colour). Shards: webdataset's .decode() reads both; each
sample's array equals the PNG's pixels, with the same key and label. Prints the counts.
"""
import glob
import os
import sys

import numpy
import webdataset
from PIL import Image


def pixels(png, like):
    a = numpy.asarray(Image.open(png).convert("RGB"))
    if like.ndim == 2:
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all(), png
        return a[..., 0]
    return a


png_dir, npy_dir, png_shards, npy_shards = sys.argv[1:5]
files = 0
for png in sorted(glob.glob(os.path.join(png_dir, "**", "*.png"), recursive=True)):
    rel = os.path.relpath(png, png_dir)[: -len(".png")] + ".npy"
    arr = numpy.load(os.path.join(npy_dir, rel))
    assert arr.dtype == numpy.uint8, (rel, arr.dtype)
    assert (arr == pixels(png, arr)).all(), rel
    files += 1
npys = glob.glob(os.path.join(npy_dir, "**", "*.npy"), recursive=True)
assert files == len(npys) and files > 0, (files, len(npys))


def samples(d):
    urls = sorted(glob.glob(os.path.join(d, "*.tar")))
    return list(webdataset.WebDataset(urls, shardshuffle=False).decode("rgb8"))


a, b = samples(png_shards), samples(npy_shards)
assert len(a) == len(b) and a, (len(a), len(b))
for x, y in zip(a, b):
    assert x["__key__"] == y["__key__"] and x["cls"] == y["cls"], (x["__key__"], y["__key__"])
    arr = y["npy"]
    assert isinstance(arr, numpy.ndarray) and arr.dtype == numpy.uint8, type(arr)
    want = x["png"] if arr.ndim == 3 else x["png"][..., 0]
    assert (arr == want).all(), x["__key__"]
print(f"{files} files, {len(a)} samples, shape {arr.shape}")
