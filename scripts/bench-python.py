#!/usr/bin/env python3
"""On-the-fly samples/s into a PyTorch DataLoader against `render` images/s, same run, same machine.

usage: scripts/bench-python.py [--classes 4] [--workers 2] [--threads N] [--instances 10]
Needs the package (pip install . or the wheel) and torch. Both sides draw the same samples at
FractalDB-1k settings (362x362, 200,000 points, patch_gray, weights 0.4, 4 flips): `render` writes
WebDataset shards with all threads (PNG + tar), the DataLoader gets uint8 tensors from
`FractalDBIterable` (no PNG, no disk) with --workers workers, batch 64: drawn as whole batches into
shared memory (`batch_size=64`, the figure compared), and per sample through the DataLoader's collate.
"""
import argparse
import json
import os
import tempfile
import time

import torch

import fractaldb
from fractaldb.torch import FractalDBIterable

p = argparse.ArgumentParser()
p.add_argument("--classes", type=int, default=4)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--instances", type=int, default=10)
a = p.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    classes = fractaldb.search(categories=a.classes, out=os.path.join(tmp, "s"), quiet=True, no_previews=True)
    root = os.path.dirname(classes[0].path)
    n = a.classes * 25 * a.instances * 4
    t0 = time.perf_counter()
    fractaldb.render(root, os.path.join(tmp, "wds"), format="wds", instance=a.instances, threads=a.threads,
                     samples_per_shard=max(1, n // 100), quiet=True)
    render_s = time.perf_counter() - t0
    rates = {}
    for mode in ("samples", "batches"):
        if mode == "samples":  # the DataLoader batches and collates
            ds = FractalDBIterable(root, instances=a.instances, shuffle_buffer=256)
            loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=a.workers)
        else:  # the dataset draws whole batches into shared memory
            ds = FractalDBIterable(root, instances=a.instances, shuffle_buffer=256, batch_size=64)
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=a.workers)
        t0 = time.perf_counter()
        got = sum(len(y) for _, y in loader)
        rates[mode] = time.perf_counter() - t0
        assert got == n, (got, n)
    fly_s = rates["batches"]
    r = {
        "images": n, "cores": os.cpu_count(), "render_threads": a.threads, "loader_workers": a.workers,
        "render_images_per_s": round(n / render_s, 1), "on_the_fly_samples_per_s": round(n / fly_s, 1),
        "on_the_fly_samples_mode_per_s": round(n / rates["samples"], 1),
        "ratio": round(render_s / fly_s, 2),
    }
    print(json.dumps(r))
    print(f"render (wds, {a.threads} threads): {r['render_images_per_s']} images/s; "
          f"DataLoader ({a.workers} workers, FractalDBIterable batch_size=64): {r['on_the_fly_samples_per_s']} samples/s "
          f"({r['ratio']}x); per-sample mode with the DataLoader's collate: {r['on_the_fly_samples_mode_per_s']}")
