"""FractalDB on the fly in a PyTorch ``DataLoader``: no files, the original's exact images, batches as
mixed as a shuffled dataset's.

::

    import torch
    from fractaldb.torch import FractalDBIterable
    ds = FractalDBIterable("data/csv_rate0.2_category1000", instances=10, batch_size=256)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=8, persistent_workers=True)
    for epoch in range(90):
        ds.set_epoch(epoch)
        for images, labels in loader: ...

RCDB and MV-FractalDB / ExFractalDB the same way: :class:`RCDBIterable`, :class:`MVFractalDBIterable`.

torch is an optional dependency (``pip install torch``).
"""
from __future__ import annotations

import math
import os
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("fractaldb.torch needs PyTorch: pip install torch") from e

from . import RCDB, FractalDB, MVFractalDB

__all__ = ["FractalDBIterable", "RCDBIterable", "MVFractalDBIterable", "rank_and_world", "mixed_order", "stretch", "batches_per_rank", "OPEN_CLOUDS"]

#: Clouds a worker holds open at once (the default of ``open_clouds``). A batch of 256 drawn from
#: 512 open clouds picked at random holds ~200 clouds, ~184 distinct classes at FractalDB-1k
#: proportions (a uniform shuffle: ~226); an open cloud of a patch draw type is its cover
#: (4 bytes per pixel: 512 KiB at 362x362), so ~256 MB per worker.
OPEN_CLOUDS = 512

#: Samples per request to the GL engine in sample mode (batch mode: a batch per request).
GL_CHUNK = 64
#: Requests a worker keeps submitted beyond the one it writes: the engine draws the next batches
#: (FractalDB: their chaos games between this batch's rasters) while the worker hands this one over,
#: and the clouds queued batches share are computed once (at FractalDB-1k settings 4 batches of 256
#: from 512 open clouds touch ~450 clouds, where one touches ~200). What it holds: the canvases of
#: up to 1 + GL_AHEAD batches (one byte a pixel: 34 MB a batch of 256 at 362 x 362).
GL_AHEAD = 3


def rank_and_world() -> Tuple[int, int]:
    """This process's (rank, world size): ``torch.distributed`` if initialised, else the launcher's
    environment (``RANK``/``WORLD_SIZE``, as torchrun sets them), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def mixed_order(
    ids: Sequence[int], per_cloud: int, open_clouds: int, rng: random.Random, together: int = 1
) -> Iterator[Tuple[str, int]]:
    """The order a worker draws its samples in, as events: ``("open", k)`` (compute cloud ``k`` and
    hold it), ``("sample", i)``, ``("close", k)``.

    ``ids`` is the worker's stretch of the epoch's sequence (clouds in a seeded order, each cloud's
    samples together). Up to ``open_clouds`` clouds are open; each sample comes from an open cloud
    picked uniformly at random (its samples in a random order), and a cloud that runs out is closed
    and replaced by the next one, so every cloud is computed once per stretch. A random pick, not a
    round-robin: consecutive batches do not repeat the same clouds in the same pattern.

    ``together``: ids ``i`` with the same ``i // together`` (an instance's flips) stay consecutive in
    their cloud's order, so its canvas is drawn once; they reach the batches ~``open_clouds``
    samples apart all the same.
    """
    runs: List[Tuple[int, List[int]]] = []
    for i in ids:
        k = i // per_cloud
        if runs and runs[-1][0] == k:
            runs[-1][1].append(i)
        else:
            runs.append((k, [i]))
    pending = iter(runs)
    held: Dict[int, int] = {}  # cloud -> open runs (padding can repeat a cloud)
    slots: List[Tuple[int, List[int]]] = []

    def take():
        k, members = next(pending)
        groups: Dict[int, List[int]] = {}
        for i in members:
            groups.setdefault(i // together, []).append(i)
        chunks = list(groups.values())
        rng.shuffle(chunks)
        # Popped from the end: the chunks in their shuffled order, each in id order.
        members = [i for chunk in reversed(chunks) for i in reversed(chunk)]
        first = k not in held
        held[k] = held.get(k, 0) + 1
        return k, members, first

    for _ in range(min(max(1, open_clouds), len(runs))):
        k, members, first = take()
        if first:
            yield ("open", k)
        slots.append((k, members))
    while slots:
        j = rng.randrange(len(slots))
        k, members = slots[j]
        yield ("sample", members.pop())
        if members:
            continue
        held[k] -= 1
        if not held[k]:
            del held[k]
            yield ("close", k)
        try:
            nk, nmembers, first = take()
        except StopIteration:
            slots[j] = slots[-1]
            slots.pop()
            continue
        if first:
            yield ("open", nk)
        slots[j] = (nk, nmembers)


def batches_per_rank(total: int, world: int, batch_size: int, drop_last: bool) -> int:
    """Batches (samples when ``batch_size`` is 1) each rank yields per epoch: ``ceil(total / world)``
    samples each (padded), in batches of ``batch_size``, the last partial one dropped or not."""
    n = math.ceil(total / world)
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def stretch(
    total: int,
    per_cloud: int,
    seed: int,
    epoch: int,
    rank_world: Tuple[int, int],
    worker_workers: Tuple[int, int],
    batch_size: int = 1,
    drop_last: bool = False,
) -> List[int]:
    """A worker's sample ids of an epoch, before mixing: the epoch's sequence (clouds in a seeded
    order, each cloud's samples together), padded to equal ranks, this rank's contiguous part cut
    into whole batches, and this worker's contiguous run of those batches."""
    (rank, world), (worker, workers) = rank_world, worker_workers
    clouds = list(range(total // per_cloud))
    random.Random(f"{seed}/{epoch}").shuffle(clouds)
    order = [c * per_cloud + j for c in clouds for j in range(per_cloud)]
    per_rank = math.ceil(total / world)
    padded = order + order[: per_rank * world - len(order)]
    mine = padded[rank * per_rank:(rank + 1) * per_rank]
    nb = batches_per_rank(total, world, batch_size, drop_last)
    a, b = nb * worker // workers, nb * (worker + 1) // workers
    return mine[: nb * batch_size][a * batch_size:b * batch_size]


class _Mixed(IterableDataset):
    """What the mixed iterables of every family share (see :class:`FractalDBIterable`)."""

    #: Whether an epoch draws other images (FractalDB's instances) or only reorders them.
    _epochs = True

    def _setup(
        self, dataset, *, open_clouds, epoch, seed, transform, target_transform, batch_size,
        drop_last, rank, world_size, expand, together,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if batch_size is not None and (transform is not None or target_transform is not None):
            raise ValueError("batch mode (batch_size=...) draws straight into batch tensors: no transform")
        if open_clouds < 1:
            raise ValueError(f"open_clouds must be at least 1, got {open_clouds}")
        self.dataset = dataset
        self.open_clouds = open_clouds
        self._epoch = torch.tensor([epoch], dtype=torch.int64).share_memory_()
        self.seed = seed
        self.transform = transform
        self.target_transform = target_transform
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        # Gray images cross the workers' shared memory as one channel, expanded to RGB after.
        self._expand = expand
        self._total = len(dataset)
        self._per_cloud = dataset.per_cloud
        self._together = together

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    @property
    def classes(self) -> List[str]:
        return self.dataset.classes

    @property
    def class_to_idx(self) -> Dict[str, int]:
        return self.dataset.class_to_idx

    def _rank_world(self) -> Tuple[int, int]:
        r, w = rank_and_world()
        return (self.rank if self.rank is not None else r, self.world_size or w)

    def _batches_per_rank(self) -> int:
        return batches_per_rank(self._total, self._rank_world()[1], self.batch_size or 1, self.drop_last)

    def __len__(self) -> int:
        return self._batches_per_rank()

    def _mine(self, epoch: int, worker: int, workers: int) -> list:
        rank, world = self._rank_world()
        return stretch(
            self._total, self._per_cloud, self.seed, epoch, (rank, world), (worker, workers),
            self.batch_size or 1, self.drop_last,
        )

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        rank = self._rank_world()[0]
        rng = random.Random(f"{self.seed}/{epoch}/{rank}/{worker}")
        events = mixed_order(
            self._mine(epoch, worker, workers), self._per_cloud, self.open_clouds, rng, self._together
        )
        ds = self.dataset._dataset()
        draw_epoch = epoch if self._epochs else 0
        try:
            # Decided here, in the worker: a GL context is made after the DataLoader's fork.
            if ds.backend == "gl":
                yield from self._gl(ds, events, draw_epoch)
            elif self.batch_size is not None:
                yield from self._batches(ds, events, draw_epoch)
            else:
                yield from self._samples(ds, events, draw_epoch)
        finally:
            # An epoch left early (break, an error) lets its clouds go too.
            ds.close_clouds()

    def _samples(self, ds, events, epoch: int) -> Iterator:
        for what, n in events:
            if what == "open":
                ds.open_cloud(n)
            elif what == "close":
                ds.close_cloud(n)
            else:
                data, label = ds.sample(n, epoch)
                image = np.frombuffer(data, dtype=np.uint8).reshape(ds.shape)
                if self.target_transform is not None:
                    label = self.target_transform(label)
                if self.transform is not None:
                    yield self.transform(self.dataset._pil(image)), label
                else:
                    yield torch.from_numpy(image), label

    def _batches(self, ds, events, epoch: int) -> Iterator:
        """Whole batches drawn straight into shared-memory tensors: no per-sample tensors, no
        collate copy."""
        bs = self.batch_size
        shape = tuple(ds.shape[:2]) + (1,) if self._expand else tuple(ds.shape)
        images = labels = None
        k = 0
        for what, n in events:
            if what == "open":
                ds.open_cloud(n)
                continue
            if what == "close":
                ds.close_cloud(n)
                continue
            if images is None:
                images = torch.empty((bs,) + shape, dtype=torch.uint8).share_memory_()
                labels = torch.empty(bs, dtype=torch.int64)
                rows = images.numpy()
            labels[k] = ds._sample_into(n, rows[k], epoch)
            k += 1
            if k == bs:
                yield self._rgb(images), labels
                images = labels = None
                k = 0
        if k:
            yield self._rgb(images[:k]), labels[:k]

    def _gl(self, ds, events, epoch: int) -> Iterator:
        """The GL engine: the same order, each batch (in sample mode, each run of
        :data:`GL_CHUNK` samples) one request drawn on the device straight into its tensor, the next
        :data:`GL_AHEAD` requests submitted before it is written (the engine draws them meanwhile);
        no clouds are held open (the device computes a batch's clouds together)."""
        bs = self.batch_size or GL_CHUNK
        shape = tuple(ds.shape[:2]) + (1,) if self._expand else tuple(ds.shape)
        ids = [n for what, n in events if what == "sample"]
        tickets = (ds._batch_submit(ids[a:a + bs], epoch) for a in range(0, len(ids), bs))
        ahead: List = []
        for ticket in tickets:
            ahead.append(ticket)
            if len(ahead) > GL_AHEAD:
                yield from self._gl_write(ahead.pop(0), shape)
        for ticket in ahead:
            yield from self._gl_write(ticket, shape)

    def _gl_write(self, ticket, shape) -> Iterator:
        images = torch.empty((ticket.size,) + shape, dtype=torch.uint8)
        if self.batch_size is not None:
            images.share_memory_()
        labels = ticket.write_into(images.numpy())
        if self.batch_size is not None:
            yield self._rgb(images), torch.tensor(labels, dtype=torch.int64)
            return
        for image, label in zip(images, labels):
            if self.target_transform is not None:
                label = self.target_transform(label)
            if self.transform is not None:
                yield self.transform(self.dataset._pil(image.numpy())), label
            else:
                yield image, label

    def _rgb(self, images):
        return images.expand(*images.shape[:3], 3) if self._expand else images


class FractalDBIterable(_Mixed):
    """All samples of a FractalDB plan, each epoch, computed on the fly and mixed like a shuffled
    dataset, split over DDP ranks and DataLoader workers.

    Order: the clouds (class x weight row) in a seeded order per epoch (``seed``, epoch); the ranks
    take contiguous stretches of that sequence of samples, and each rank's stretch is cut into
    whole batches (``batch_size``, 1 in sample mode) dealt to the workers as contiguous runs of
    batches. A worker holds up to ``open_clouds`` clouds open and draws each sample from one of
    them picked at random (:func:`mixed_order`): each cloud is computed once per epoch (twice where
    a stretch boundary cuts it: at most ranks x workers extra clouds). See docs/python.md for how
    the mixing degrades with more ranks x workers.

    Equal counts: every rank yields ``ceil(N / world)`` samples per epoch (DDP hangs when ranks
    step different numbers of batches). When N is not a multiple of the world size, the epoch's
    order is padded by repeating its first samples (as ``DistributedSampler(drop_last=False)``), so a
    few samples appear twice in that epoch; with one rank every sample appears exactly once.
    ``drop_last=True`` (batch mode) drops each rank's last partial batch instead.

    ``len()``: samples per rank in sample mode; in batch mode the number of batches the
    ``DataLoader(batch_size=None)`` yields, whatever the worker count (only the rank's last batch
    can be partial).

    ``set_epoch(e)``: the instances of epoch ``e`` (e = 0: the images ``render`` writes; others:
    fresh patch masks from the instance key, as ``render --epoch e``) and the epoch's order. The
    epoch lives in shared memory, so ``persistent_workers=True`` workers see it.

    Yields ``(image, label)``: an H x W x 3 uint8 tensor, or in sample mode
    ``transform(PIL image)`` and ``target_transform(label)``; in batch mode ``(images, labels)``
    tensors of ``batch_size`` (gray draw types cross the workers' shared memory as one channel and
    are expanded to RGB without a copy). Other keyword arguments are
    :class:`fractaldb.FractalDB`'s. ``rank`` and ``world_size`` override :func:`rank_and_world`.

    ``backend="gl"`` (or ``"auto"`` on a hardware GPU): each worker makes its own GL context and
    draws each batch as one request to it, :data:`GL_AHEAD` batches submitted ahead (the same
    order and batches as the CPU engine; docs/python.md, "On the GPU").
    """

    def __init__(
        self,
        root,
        *,
        open_clouds: int = OPEN_CLOUDS,
        epoch: int = 0,
        seed: int = 0,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        batch_size: Optional[int] = None,
        drop_last: bool = False,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        **fractaldb_kwargs,
    ) -> None:
        super().__init__()
        fractaldb_kwargs.setdefault("seed", seed)
        # Gray draw modes have three equal channels: drawn as one and expanded to RGB (a stride-0
        # view), so a third of the bytes cross the workers' shared memory.
        color = "color" in fractaldb_kwargs.get("draw_type", "patch_gray")
        expand = batch_size is not None and not color and not fractaldb_kwargs.get("png_gray", False)
        if expand:
            fractaldb_kwargs["png_gray"] = True
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        dataset = FractalDB(root, **fractaldb_kwargs)
        # Samples per instance (its flips: consecutive ids), kept together in a cloud's order.
        first = dataset.key(0)[2]
        flips = sum(1 for j in range(dataset.per_cloud) if dataset.key(j)[2] == first)
        self._setup(
            dataset, open_clouds=open_clouds, epoch=epoch, seed=seed, transform=transform,
            target_transform=target_transform, batch_size=batch_size, drop_last=drop_last,
            rank=rank, world_size=world_size, expand=expand, together=flips,
        )


class _UnitsIterable(_Mixed):
    """A family of the folder driver (RCDB, MV-FractalDB) on the fly: see :class:`RCDBIterable`."""

    _epochs = False
    _family = None

    def __init__(
        self,
        *,
        open_clouds: int = OPEN_CLOUDS,
        epoch: int = 0,
        seed: int = 0,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        batch_size: Optional[int] = None,
        drop_last: bool = False,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        **flags,
    ) -> None:
        super().__init__()
        dataset = self._family(**flags)
        self._setup(
            dataset, open_clouds=open_clouds, epoch=epoch, seed=seed, transform=transform,
            target_transform=target_transform, batch_size=batch_size, drop_last=drop_last,
            rank=rank, world_size=world_size, expand=batch_size is not None,
            # A cloud's samples in id order: its cursor walks the stream forward.
            together=dataset.per_cloud,
        )


class RCDBIterable(_UnitsIterable):
    """RCDB on the fly (keywords: :class:`fractaldb.RCDB`'s flags, and those of
    :class:`FractalDBIterable`), mixed the same way. A cloud is a stretch of one class's stream
    (``per_cloud`` instances, up to 50); an open one holds its stream state (~2.5 KB), so 512 open
    clouds cost little memory. RCDB has one set of images: ``set_epoch`` only reorders them. The
    images are gray: batches cross the workers' shared memory as one channel."""

    _family = RCDB


class MVFractalDBIterable(_UnitsIterable):
    """MV-FractalDB and ExFractalDB on the fly (keywords: :class:`fractaldb.MVFractalDB`'s flags,
    and those of :class:`FractalDBIterable`), mixed the same way. A cloud is a few whole models of
    one class (``per_cloud`` views); an open one holds its current model's points (120 KB). One set
    of images: ``set_epoch`` only reorders them."""

    _family = MVFractalDB
