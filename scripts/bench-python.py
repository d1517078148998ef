#!/usr/bin/env python3
"""On-the-fly samples/s into a PyTorch DataLoader against `render` images/s, same run, same machine.

usage: scripts/bench-python.py [--family fractaldb|rcdb|mvfdb] [--classes 4] [--workers 2] [--threads N]
                               [--instances 10] [--open-clouds 512] [--backend cpu|gl|auto]
                               [--start-method fork|spawn] [--train resnet18] [--train-steps 20]
                               [--image-size N]
Needs the package (pip install . or the wheel) and torch. Both sides draw the same samples.
--family rcdb: RCDB-1k's settings (512x512) with --instances images per class, `rcdb --format wds`
against `RCDBIterable`; --family mvfdb: MV-FractalDB-1k's (12 views, 512x512) with --instances
models per class (weight rows 0..), `mvfdb --format wds` against `MVFractalDBIterable` (its search and
models run once, before the clock, on both sides).
--family fractaldb (the default): FractalDB-1k settings (362x362, 200,000 points, patch_gray, weights 0.4, 4 flips): `render` writes
WebDataset shards with all threads (PNG + tar), the DataLoader gets uint8 tensors from
`FractalDBIterable` (no PNG, no disk) with --workers workers, batch 64: drawn as whole batches into
shared memory (`batch_size=64`, the figure compared), and per sample through the DataLoader's collate.
Also: distinct classes per batch of 64 (against a uniform shuffle's expectation) and the workers'
peak private memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup, sampled every 25 batches:
what a worker adds beyond the pages it shares with its parent).
--backend: the engine of both sides (`render --backend`, the iterable's `backend=`; the GL engine's
workers each make their own context after the DataLoader starts them with --start-method).
--train MODEL (a torchvision model name): also the training-step rate of MODEL (SGD, batch 64, on CUDA
when torch sees a GPU) fed by the batch-mode DataLoader, against the same steps on one fixed batch
(what the model alone manages): steps/s fed and alone, and the share of the steps the loader keeps up with.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time

import torch

import fractaldb
from fractaldb.torch import FractalDBIterable, MVFractalDBIterable, RCDBIterable

p = argparse.ArgumentParser()
p.add_argument("--family", choices=("fractaldb", "rcdb", "mvfdb"), default="fractaldb")
p.add_argument("--classes", type=int, default=4)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--instances", type=int, default=10)
p.add_argument("--open-clouds", type=int, default=None)
p.add_argument("--backend", choices=("cpu", "gl", "auto"), default="cpu")
p.add_argument("--start-method", choices=("fork", "spawn", "forkserver"), default="fork")
p.add_argument("--train", default=None, help="a torchvision model name (e.g. resnet18)")
p.add_argument("--train-steps", type=int, default=20)
p.add_argument("--image-size", type=int, default=None, help="default: the family's (362, 512, 512)")



def private_mb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            kb = sum(int(l.split()[1]) for l in f if l.startswith(("Private_Clean", "Private_Dirty")))
        return kb / 1024
    except OSError:
        return 0.0


def family(tmp):
    """(the iterable's class and keywords, images, a function rendering the same images as shards)."""
    if a.family == "rcdb":
        kw = dict(numof_classes=a.classes, numof_instances=a.instances, numof_thread=1)
        n = a.classes * a.instances
        flags = ["--numof_classes", a.classes, "--numof_instances", a.instances, "--numof_thread", 1]
        if a.image_size:
            kw["image_size"] = a.image_size
            flags += ["--image_size", a.image_size]
        return RCDBIterable, kw, n, lambda out: fractaldb.run("rcdb", *map(str, flags + ["--out", out]), *shards(n))
    if a.family == "mvfdb":
        kw = dict(classes=a.classes, weight_rows=f"0-{a.instances - 1}")
        if a.image_size:
            kw["img_size"] = a.image_size
        ds = fractaldb.MVFractalDB(**kw)  # the search and models, before the clock
        n = len(ds)
        flags = ["--classes", a.classes, "--weight-rows", kw["weight_rows"]]
        if a.image_size:
            flags += ["--img_size", a.image_size]
        return MVFractalDBIterable, kw, n, lambda out: fractaldb.run("mvfdb", *map(str, flags + ["--out", out]), *shards(n))
    classes = fractaldb.search(num_classes=a.classes, out=os.path.join(tmp, "s"), quiet=True, no_previews=True)
    root = os.path.dirname(classes[0].path)
    n = a.classes * 25 * a.instances * 4
    size = a.image_size or 362

    def render(out):
        fractaldb.render(root, out, format="wds", instance=a.instances, threads=a.threads, image_size_x=size,
                         image_size_y=size, samples_per_shard=max(1, n // 100), quiet=True, backend=a.backend)
    return (lambda **k: FractalDBIterable(root, **k)), dict(instances=a.instances, image_size=size), n, render


def shards(n):
    return ["--format", "wds", "-j", str(a.threads), "--samples-per-shard", str(max(1, n // 100)), "-q",
            "--backend", a.backend]


def train(Iterable, kw, ctx):
    """Steps/s of a torchvision model fed by the batch-mode loader, and alone on one fixed batch."""
    import torchvision

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = getattr(torchvision.models, a.train)(num_classes=max(2, a.classes)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        loss = loss_fn(model(x), y.to(dev, non_blocking=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    loader = torch.utils.data.DataLoader(Iterable(batch_size=64, **kw), batch_size=None, num_workers=a.workers,
                                         pin_memory=dev == "cuda", **ctx)
    it = iter(loader)
    fixed = next(it)
    step(*fixed)  # warm-up (allocations, kernels)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    sync()
    t0, steps = time.perf_counter(), 0
    for x, y in it:
        if steps == a.train_steps:
            break
        if len(y) == 64:
            step(x, y)
            steps += 1
    sync()
    fed = steps / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*fixed)
    sync()
    alone = steps / (time.perf_counter() - t0)
    return {"train_model": a.train, "train_device": dev, "train_steps": steps,
            "train_steps_per_s_fed": round(fed, 2), "train_steps_per_s_alone": round(alone, 2),
            "train_fed_share": round(fed / alone, 2)}


def main():
    """The bench (behind the main guard: spawn and forkserver workers import this module)."""
    extra = {"backend": a.backend}
    if a.open_clouds is not None:
        extra["open_clouds"] = a.open_clouds
    with tempfile.TemporaryDirectory() as tmp:
        Iterable, kw, n, render = family(tmp)
        kw.update(extra)
        t0 = time.perf_counter()
        render(os.path.join(tmp, "wds"))
        render_s = time.perf_counter() - t0
        rates, distinct, peak = {}, [], 0.0
        ctx = {"multiprocessing_context": a.start_method} if a.workers else {}
        for mode in ("samples", "batches"):
            if mode == "samples":  # the DataLoader batches and collates
                ds = Iterable(**kw)
                loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=a.workers, **ctx)
            else:  # the dataset draws whole batches into shared memory
                ds = Iterable(batch_size=64, **kw)
                loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=a.workers, **ctx)
            t0 = time.perf_counter()
            got = 0
            for b, (_, y) in enumerate(loader):
                got += len(y)
                if mode == "batches":
                    if len(y) == 64:
                        distinct.append(len(set(y.tolist())))
                    # Reading smaps_rollup walks a worker's mappings under its memory lock: rarely.
                    if b % 25 == 0:
                        peak = max([peak] + [private_mb(c.pid) for c in multiprocessing.active_children()])
            rates[mode] = time.perf_counter() - t0
            assert got == n, (got, n)
        fly_s = rates["batches"]
        r = {
            "family": a.family, "images": n, "cores": os.cpu_count(), "render_threads": a.threads, "loader_workers": a.workers,
            "render_images_per_s": round(n / render_s, 1), "on_the_fly_samples_per_s": round(n / fly_s, 1),
            "on_the_fly_samples_mode_per_s": round(n / rates["samples"], 1),
            "ratio": round(render_s / fly_s, 2),
            "distinct_classes_per_batch_of_64": round(statistics.mean(distinct), 1),
            "uniform_shuffle_expectation": round(a.classes * (1 - (1 - 1 / a.classes) ** 64), 1),
            "worker_peak_private_mb": round(peak, 1),
            "backend": a.backend, "start_method": a.start_method,
        }
        if a.train:
            r.update(train(Iterable, kw, ctx))
        print(json.dumps(r))
        print(f"{a.family}: render (wds, {a.threads} threads): {r['render_images_per_s']} images/s; "
              f"DataLoader ({a.workers} workers, batch_size=64): {r['on_the_fly_samples_per_s']} samples/s "
              f"({r['ratio']}x); per-sample mode with the DataLoader's collate: {r['on_the_fly_samples_mode_per_s']}; "
              f"{r['distinct_classes_per_batch_of_64']} distinct classes per batch of 64 (uniform shuffle: "
              f"{r['uniform_shuffle_expectation']}); worker peak private memory {r['worker_peak_private_mb']} MB"
              f" [backend {a.backend}, {a.start_method}]")
        if a.train:
            print(f"training {a.train} on {r['train_device']}: {r['train_steps_per_s_fed']} steps/s fed by the loader, "
                  f"{r['train_steps_per_s_alone']} alone ({r['train_fed_share']})")


if __name__ == "__main__":
    a = p.parse_args()
    main()
