"""FractalDB on the fly in a PyTorch ``DataLoader``: no files, the original's exact images.

::

    from fractaldb.torch import FractalDBIterable
    ds = FractalDBIterable("data/csv_rate0.2_category1000", instances=10, shuffle_buffer=256)
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=8)
    for epoch in range(90):
        ds.set_epoch(epoch)
        for images, labels in loader: ...

torch is an optional dependency (``pip install torch``).
"""
from __future__ import annotations

import math
import os
import random

import numpy as np
from typing import Callable, Iterator, Optional, Tuple

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("fractaldb.torch needs PyTorch: pip install torch") from e

from . import FractalDB

__all__ = ["FractalDBIterable", "rank_and_world"]


def rank_and_world() -> Tuple[int, int]:
    """This process's (rank, world size): ``torch.distributed`` if initialised, else the launcher's
    environment (``RANK``/``WORLD_SIZE``, as torchrun sets them), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class FractalDBIterable(IterableDataset):
    """All samples of a FractalDB plan, each epoch, computed on the fly: each point cloud once per
    epoch and rank (its images are yielded together through the shuffle buffer), split over DDP
    ranks and DataLoader workers.

    Order: the clouds (class x weight row) in a seeded order per epoch (``seed``, ``epoch``); each
    rank takes a contiguous stretch of that sequence of samples, each worker a contiguous stretch
    of its rank's, so a cloud is computed by one worker (two where a stretch boundary cuts it).

    Equal counts: every rank yields ``ceil(N / world)`` samples per epoch (DDP hangs when ranks
    step different numbers of batches). When N is not a multiple of the world size, the epoch's
    order is padded by repeating its first samples (as ``DistributedSampler(drop_last=False)``), so a
    few samples appear twice in that epoch; with one rank every sample appears exactly once.

    Shuffle buffer: samples pass through a buffer of ``shuffle_buffer`` images per worker, from
    which a random one is yielded as each new one arrives; its memory is ``shuffle_buffer`` x H x W
    x 3 bytes per worker (256 at 362x362: about 100 MB). 0 or 1 disables it (the plan's order).

    ``set_epoch(e)``: the instances of epoch ``e`` (e = 0: the images ``render`` writes; others:
    fresh patch masks from the instance key, as ``render --epoch e``) and the epoch's order.

    Yields ``(image, label)``: an H x W x 3 uint8 tensor (or ``transform(image array)``) and the
    class index. Other keyword arguments are :class:`fractaldb.FractalDB`'s. ``rank`` and
    ``world_size`` override :func:`rank_and_world`.
    """

    def __init__(
        self,
        classes,
        *,
        shuffle_buffer: int = 256,
        epoch: int = 0,
        seed: int = 0,
        transform: Optional[Callable] = None,
        batch_size: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        **fractaldb_kwargs,
    ) -> None:
        super().__init__()
        fractaldb_kwargs.setdefault("seed", seed)
        # Gray draw modes have three equal channels: drawn as one and expanded to RGB (a stride-0
        # view), so a third of the bytes cross the workers' shared memory.
        color = "color" in fractaldb_kwargs.get("draw_type", "patch_gray")
        self._expand = batch_size is not None and not color and not fractaldb_kwargs.get("png_gray", False)
        if self._expand:
            fractaldb_kwargs["png_gray"] = True
        self.dataset = FractalDB(classes, **fractaldb_kwargs)
        self.shuffle_buffer = shuffle_buffer
        self.epoch = epoch
        self.seed = seed
        self.transform = transform
        self.batch_size = batch_size
        if batch_size is not None and (batch_size < 1 or transform is not None):
            raise ValueError("batch_size must be at least 1, and cannot be combined with transform")
        self.rank = rank
        self.world_size = world_size
        self._total = len(self.dataset)
        self._per_cloud = self.dataset.per_cloud

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_world(self) -> Tuple[int, int]:
        r, w = rank_and_world()
        return (self.rank if self.rank is not None else r, self.world_size or w)

    def __len__(self) -> int:
        return math.ceil(self._total / self._rank_world()[1])

    def _order(self) -> list:
        """The epoch's sample ids: clouds in a seeded order, each cloud's samples together."""
        clouds = list(range(self._total // self._per_cloud))
        random.Random(f"{self.seed}/{self.epoch}").shuffle(clouds)
        k = self._per_cloud
        return [c * k + j for c in clouds for j in range(k)]

    def _mine(self) -> list:
        """This rank's and worker's sample ids of the epoch, in order."""
        rank, world = self._rank_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = self._order()
        per_rank = math.ceil(self._total / world)
        padded = order + order[: per_rank * world - len(order)]
        mine = padded[rank * per_rank:(rank + 1) * per_rank]
        a = len(mine) * worker // workers
        b = len(mine) * (worker + 1) // workers
        return mine[a:b], random.Random(f"{self.seed}/{self.epoch}/{rank}/{worker}")

    def __iter__(self) -> Iterator:
        ids, rng = self._mine()
        if self.batch_size is not None:
            yield from self._batches(ids, rng)
            return
        buf: list = []
        for i in ids:
            item = self._item(i)
            if self.shuffle_buffer <= 1:
                yield item
                continue
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            j = rng.randrange(len(buf))
            buf[j], item = item, buf[j]
            yield item
        rng.shuffle(buf)
        yield from buf

    def _batches(self, ids: list, rng: random.Random) -> Iterator:
        """Whole batches drawn straight into shared-memory tensors: the same samples, in the same
        shuffled order as sample mode, without per-sample tensors or a collate copy."""
        ds, bs = self.dataset, self.batch_size
        shape = ds.shape
        slots = max(1, self.shuffle_buffer)
        pool = np.empty((min(slots, max(1, len(ids))),) + shape, dtype=np.uint8)
        pool_labels = [0] * len(pool)
        filled = 0
        images = labels = None
        k = 0

        def emit(src_slot):
            nonlocal images, labels, k
            if images is None:
                images = torch.empty((bs,) + shape, dtype=torch.uint8).share_memory_()
                labels = torch.empty(bs, dtype=torch.int64)
            images.numpy()[k] = pool[src_slot]
            labels[k] = pool_labels[src_slot]
            k += 1
            if k == bs:
                out = (self._rgb(images), labels)
                images = labels = None
                k = 0
                return out
            return None

        for i in ids:
            if slots <= 1:
                pool_labels[0] = ds.sample_into(i, pool[0], self.epoch)
                out = emit(0)
            elif filled < len(pool):
                pool_labels[filled] = ds.sample_into(i, pool[filled], self.epoch)
                filled += 1
                continue
            else:
                j = rng.randrange(len(pool))
                out = emit(j)
                pool_labels[j] = ds.sample_into(i, pool[j], self.epoch)
            if out is not None:
                yield out
        rest = list(range(filled)) if slots > 1 else []
        rng.shuffle(rest)
        for j in rest:
            out = emit(j)
            if out is not None:
                yield out
        if k:
            yield self._rgb(images[:k]), labels[:k]

    def _rgb(self, images):
        return images.expand(*images.shape[:3], 3) if self._expand else images

    def _item(self, i: int):
        image, label = self.dataset.sample(i, self.epoch)
        if self.transform is not None:
            return self.transform(image), label
        return torch.from_numpy(image), label
