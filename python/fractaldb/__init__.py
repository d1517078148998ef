"""fractaldb: the original FractalDB generator's exact images, fast, from Python.

- :func:`search` finds categories (the CSVs of ``fractaldb search``),
- :func:`render` writes a dataset (folders or WebDataset shards, as ``fractaldb render``),
- :class:`FractalDB` draws any sample in memory, pixel-identical to the PNG ``render`` writes,
- :mod:`fractaldb.torch` streams samples into a PyTorch ``DataLoader`` with no disk.

All of it runs the Rust engine of the ``fractaldb`` command (no second implementation). Long calls
release the GIL and stop on Ctrl-C (``KeyboardInterrupt``). Bad input raises ``ValueError`` (with the
file and line, or the flag) or ``OSError``, with the command line's messages.
"""
from __future__ import annotations

import csv
import operator
import os
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["search", "render", "FractalDB", "RCDB", "MVFractalDB", "ClassInfo", "run", "NAMES", "GL_MEMORY", "__version__"]

PathLike = Union[str, "os.PathLike[str]"]


def __getattr__(name: str):
    # The version of the engine this package carries (the crate's), read when asked.
    if name == "__version__":
        return _engine().__version__
    raise AttributeError(f"module 'fractaldb' has no attribute {name!r}")


def _engine():
    # Imported on first use, so that importing the package (e.g. before a DataLoader forks) creates
    # no engine state.
    import importlib

    return importlib.import_module("fractaldb._native")


def _flags(flags: dict) -> List[str]:
    """Keyword arguments as command-line flags: ``image_size_x=64`` -> ``--image-size-x 64``;
    True -> the bare flag, False/None -> nothing, a list -> comma-joined."""
    out: List[str] = []
    for k, v in flags.items():
        if v is None or v is False:
            continue
        name = "--" + k.replace("_", "-")
        if v is True:
            out.append(name)
        elif isinstance(v, (list, tuple)):
            out += [name, ",".join(str(x) for x in v)]
        else:
            out += [name, os.fspath(v) if isinstance(v, os.PathLike) else str(v)]
    return out


#: The Python keywords that differ from a command's flag names (docs/usage.md, "One name table"):
#: torch's conventions (``root``: the class folder, as torchvision's datasets call it;
#: ``num_classes``: a count of classes) and one name per idea across the families. The command's
#: own flag names are accepted too (``numof_classes=``, ``instance=``): its scripts' spellings.
NAMES = {
    "search": {"num_classes": ("categories",)},
    "render": {
        "root": ("load_root",),
        "instances": ("instance",),
        "image_size": ("image_size_x", "image_size_y"),
        "weights": ("weight_csv",),
    },
    "rcdb": {"num_classes": ("numof_classes",), "instances": ("numof_instances",)},
    "mvfdb": {"num_classes": ("classes",), "image_size": ("img_size",), "weights": ("weight_csv",)},
}


def _spell(command: str, kwargs: dict) -> dict:
    """``kwargs`` with the Python names of :data:`NAMES` turned into the command's flag names;
    ``TypeError`` when one idea is given under both names."""
    out = dict(kwargs)
    for name, flags in NAMES.get(command, {}).items():
        if name not in out:
            continue
        clash = [f for f in flags if f in out and f != name]
        if clash:
            raise TypeError(f"{command}: {name}= and {clash[0]}= name the same setting: give one")
        value = out.pop(name)
        for f in flags:
            out[f] = value
    return out


def run(*argv: str) -> None:
    """Runs a ``fractaldb`` command line (``run("render", "--help")``); raises on failure."""
    argv = ["fractaldb", *argv]
    why = _engine().usage_error(argv)
    if why is not None:
        raise ValueError(why)
    code = _engine().cli(argv)
    if code != 0:
        raise ValueError(f"{' '.join(argv)}: exit code {code}")


class ClassInfo(NamedTuple):
    """A category: its name (``00000``), its CSV file, and its maps as rows of
    (a, b, c, d, e, f, probability)."""

    name: str
    path: str
    maps: List[Tuple[float, ...]]


#: An argument not given (``None`` is a value some callers pass by mistake, and is refused).
_UNSET = object()


def search(
    num_classes: int = _UNSET,  # type: ignore[assignment]
    rate: float = 0.2,
    points: int = 100_000,
    seed: int = 1,
    out: Optional[PathLike] = None,
    *,
    categories: int = _UNSET,  # type: ignore[assignment]
    **flags,
) -> List[ClassInfo]:
    """The category search (``fractaldb search``): writes
    ``{out}/csv_rate{rate}_category{categories}/*.csv`` (default ``out``: ``./data``) and returns the
    classes found, in order. ``num_classes`` (default 1000) is the command's ``--categories`` (that
    name works too). Extra keyword arguments are more flags (``threads=4``, ``quiet=True``)."""
    if num_classes is not _UNSET and categories is not _UNSET:
        raise TypeError("search: num_classes= and categories= name the same setting: give one")
    count = "categories" if categories is not _UNSET else "num_classes"
    if categories is _UNSET:
        categories = 1000 if num_classes is _UNSET else num_classes
    for name, value, kind in ((count, categories, int), ("points", points, int), ("seed", seed, int)):
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"search: {name} must be an int, got {value!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"search: rate must be a number, got {rate!r}")
    if categories < 1:
        raise ValueError(f"search: {count} must be at least 1, got {categories}")
    out = os.fspath(out) if out is not None else "./data"
    run(
        "search",
        *_flags(dict(categories=categories, rate=rate, points=points, seed=seed, out=out, **flags)),
    )
    folder = os.path.join(out, f"csv_rate{rate}_category{categories}")
    classes = []
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".csv")):
        path = os.path.join(folder, name)
        with open(path, newline="") as f:
            maps = [tuple(float(x) for x in row) for row in csv.reader(f) if row]
        classes.append(ClassInfo(name[:-4], path, maps))
    return classes


def render(root: PathLike, out: PathLike, **render_flags) -> None:
    """Writes a dataset as ``fractaldb render --load-root ROOT --out OUT ...`` does (the same
    files), with its progress bar. ``render_flags``: :class:`FractalDB`'s keywords
    (``instances=10``, ``image_size=362``, ``weights=...``) and any other flag of the command
    (``format="wds"``, ``flips=[0, 1]``, ``quiet=True``); the command's own names work too
    (``instance=10``, see :data:`NAMES`)."""
    for k in ("transform", "target_transform"):
        if k in render_flags:
            raise TypeError(f"render: {k}= is a dataset's, not render's")
    flags = _spell("render", dict(render_flags, root=root))
    root = flags.pop("load_root")
    argv = ["render", "--load-root", os.fspath(root), "--out", os.fspath(out), *_flags(flags)]
    _checked(["fractaldb", *argv], "render")
    run(*argv)


#: Video memory (MiB) one GL context of a Python dataset sizes its batches by, unless told
#: (``gl_memory=``): a DataLoader worker each, beside a training job on the same GPU.
GL_MEMORY = 1024


def _device(backend, gpu, egl_device, gl_memory) -> dict:
    """The engine keywords of every family, checked: the native datasets' ``backend``, ``gpu``,
    ``egl_device`` and ``gl_memory``."""
    if backend not in ("cpu", "gl", "auto"):
        raise ValueError(f"backend must be \"cpu\", \"gl\" or \"auto\", got {backend!r}")
    for name, v in (("gpu", gpu), ("egl_device", egl_device), ("gl_memory", gl_memory)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if v is not None and v < 0:
            raise ValueError(f"{name} must not be negative, got {v}")
    if gl_memory is not None and gl_memory < 64:
        raise ValueError(f"gl_memory is in MiB: at least 64, got {gl_memory}")
    return dict(backend=backend, gpu=gpu, egl_device=egl_device, gl_memory=gl_memory)


class _MapStyle:
    """What every family's map-style dataset shares: torchvision's conventions over ``sample(i)``."""

    transform = None
    target_transform = None

    @property
    def classes(self) -> List[str]:
        """Class names by label index (torchvision's name; ``class_names`` too)."""
        return list(self._dataset().class_names)

    @property
    def class_names(self) -> List[str]:
        """Class names by label index."""
        return self.classes

    @property
    def class_to_idx(self) -> dict:
        """Class name -> label index, as torchvision's datasets have it."""
        return {c: i for i, c in enumerate(self.classes)}

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(height, width, channels) of every sample."""
        return tuple(self._dataset().shape)

    def __len__(self) -> int:
        return len(self._dataset())

    def file_name(self, i: int) -> str:
        """Where the command's folder output writes sample ``i``, relative to its output root."""
        return self._dataset().file_name(i)

    @property
    def engine(self) -> str:
        """The engine this process draws on, ``"cpu"`` or ``"gl"`` (``backend="auto"`` is decided
        on first asking, in this process)."""
        return self._dataset().backend

    def sample_batch_into(self, ids: Sequence[int], out: np.ndarray, epoch: int = 0) -> List[int]:
        """Writes samples ``ids`` into ``out`` (a writable, C-contiguous uint8 array of
        ``len(ids)`` x the sample's shape, e.g. a batch tensor's ``.numpy()``); returns their labels.
        On the GL engine the batch is one request to the device."""
        return self._dataset()._batch_into([operator.index(i) for i in ids], out, epoch)

    def _pil(self, image: np.ndarray):
        """A sample's array as a PIL image (mode ``L`` for one channel, ``RGB`` for three)."""
        from PIL import Image

        return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)

    def __getitem__(self, i):
        """Sample ``i`` (negative counts from the end; a slice gives a list), through
        ``transform`` (a PIL image) and ``target_transform`` when set."""
        n = len(self)
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(n))]
        i = operator.index(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index out of range for a dataset of {n}")
        image, label = self.sample(i)
        if self.target_transform is not None:
            label = self.target_transform(label)
        if self.transform is not None:
            return self.transform(self._pil(image)), label
        return image, label

    def __iter__(self) -> Iterable[Tuple[np.ndarray, int]]:
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_pid=None, _ds=None)
        return state



class FractalDB(_MapStyle):
    """A FractalDB dataset drawn on demand: ``sample(i)`` is sample ``i`` of the plan's canonical
    order, pixel-identical to the PNG ``fractaldb render`` writes for it with the same settings.

    The order is class-major: sample ``i`` is (class, weight row, instance, flip) with ``flip``
    varying fastest, over the selected weight rows and flips; ``file_name(i)`` is its path in the
    folder layout (``00000/00000_02_count_3_flip1.png``) and ``key(i)`` its 4 indices.
    Consecutive samples of one (class, weight row) compute its point cloud once.

    ``root`` is a folder of class CSVs (torchvision's name; the command's ``--load-root``);
    ``weights`` is a weights CSV or ``builtin:S``;
    ``mask_rng`` ``"counter[:S]"`` (default, keyed by ``seed``) or ``"python:S"`` (the original's
    seeded masks); ``flips`` a list of 0..3. Nothing native is created until the first call, so an
    instance can be made before a DataLoader forks its workers.

    ``backend``: ``"cpu"``, ``"gl"`` (the GL engine through headless EGL) or ``"auto"`` (gl on a
    hardware GPU, else cpu): the same pixels either way. It is decided, and the GL engine's context
    made, in the process that draws (a DataLoader worker makes its own after the fork); ``engine``
    says which it is. On the GL engine a batch (``sample_batch_into``, :mod:`fractaldb.torch`'s batch
    mode) is one request: its clouds computed and drawn together on the device. ``gpu`` (a CUDA
    ordinal; default ``LOCAL_RANK``, as the commands choose) or ``egl_device`` picks the device;
    ``gl_memory`` (MiB, default 1024) bounds what one context sizes its batches by (the command's
    ``--gl-memory``; it defaults to a quarter of the free video memory).
    """

    def __init__(
        self,
        root: PathLike,
        *,
        image_size: int = 362,
        iteration: int = 200_000,
        draw_type: str = "patch_gray",
        weights: str = "builtin:0.4",
        instances: int = 10,
        flips: Sequence[int] = (0, 1, 2, 3),
        seed: int = 0,
        mask_rng: Optional[str] = None,
        backend: str = "auto",
        gpu: Optional[int] = None,
        egl_device: Optional[int] = None,
        gl_memory: Optional[int] = GL_MEMORY,
        weight_rows: Optional[str] = None,
        png_gray: bool = False,
        transform=None,
        target_transform=None,
    ) -> None:
        self.transform = transform
        self.target_transform = target_transform
        self._argv = _flags(
            dict(
                load_root=os.fspath(root),
                image_size_x=image_size,
                image_size_y=image_size,
                iteration=iteration,
                draw_type=draw_type,
                weight_csv=os.fspath(weights) if isinstance(weights, os.PathLike) else weights,
                instance=instances,
                flips=list(flips),
                seed=seed,
                mask_rng=mask_rng,
                weight_rows=weight_rows,
                png_gray=png_gray,
                backend="cpu",
                threads=1,
                quiet=True,
            )
        )
        _checked(["fractaldb", "render", *self._argv], "FractalDB")
        self.backend = backend
        self._device = _device(backend, gpu, egl_device, gl_memory)
        self._pid: Optional[int] = None
        self._ds = None
        self._dataset()  # validate now: bad input raises here, with the file and line

    def _dataset(self):
        # One native dataset per process: a forked DataLoader worker makes its own on first use.
        if self._ds is None or self._pid != os.getpid():
            self._ds = _engine().Dataset(self._argv, **self._device)
            self._pid = os.getpid()
        return self._ds

    def key(self, i: int) -> Tuple[int, int, int, int]:
        """(class, weight row, instance, flip) of sample ``i``."""
        return self._dataset().key(i)

    def sample(self, i: int, epoch: int = 0) -> Tuple[np.ndarray, int]:
        """Sample ``i``: (uint8 array H x W x 3, or H x W x 1 with ``png_gray``; its class label).
        ``epoch`` > 0 draws other instances of the same clouds (the render's ``--epoch``)."""
        ds = self._dataset()
        data, label = ds.sample(i, epoch)
        return np.frombuffer(data, dtype=np.uint8).reshape(ds.shape), label

    def sample_into(self, i: int, out: np.ndarray, epoch: int = 0) -> int:
        """Writes sample ``i`` into ``out`` (a writable, C-contiguous uint8 array of the sample's
        shape, e.g. a row of a batch) with no intermediate copy; returns its label."""
        return self._dataset()._sample_into(i, out, epoch)

    @property
    def per_cloud(self) -> int:
        """Samples per point cloud (class x weight row): ids ``[k * per_cloud, (k+1) * per_cloud)``
        share cloud ``k``."""
        return self._dataset().per_cloud


def _checked(argv: List[str], who: str) -> List[str]:
    """``argv`` if it parses; else TypeError for a keyword the command does not have, ValueError
    for a bad value, each in Python's terms (the keyword, not the flag), the command's reason kept."""
    import re

    why = _engine().usage_error(argv)
    if why is None:
        return argv
    m = re.search(r"unexpected argument '--?([^' ]+)'", why)
    if m:
        name = m.group(1).replace("-", "_")
        raise TypeError(
            f"{who}() got an unexpected keyword argument {name!r} (its keywords: the flags of "
            f"`fractaldb {argv[1]} --help` with _ for -, and {', '.join(sorted(NAMES.get(argv[1], {})))})"
        )
    m = re.search(r"invalid value '(.*)' for '--?([^' ]+)[^']*': (.*)", why)
    if m:
        value, name, reason = m.groups()
        raise ValueError(f"{who}: invalid value {value!r} for {name.replace('-', '_')}=: {reason.strip()}")
    raise ValueError(f"{who}: {why.removeprefix('error: ').splitlines()[0]}")


class _Units(_MapStyle):
    """A family drawn one sample at a time through its command's own render stages: sample ``i`` is
    the ``i``-th image of the command's folder output (unit by unit), pixel-identical to its PNG.
    Keyword arguments are the command's flags (``numof_thread=4`` is ``--numof_thread 4``), with the
    Python names of :data:`NAMES` for the ideas every family shares (``num_classes``, ``instances``,
    ``image_size``, ``weights``; the command's names work too); its defaults are the command's. A sample renders its whole unit once; the unit's next samples are
    free, so iterate in order or use ``fractaldb.torch``. Preparation (the class starts, the
    search and models) runs once, when the dataset is made: forked DataLoader workers share it,
    and a pickled dataset (a ``spawn``/``forkserver`` worker) carries them with it (MV-FractalDB's
    search and model pass, RCDB's class starts).

    ``backend``, ``gpu``, ``egl_device``, ``gl_memory``: the engine, as :class:`FractalDB`'s (a
    unit, or a batch's wanted instances of its units, drawn by the family's GL stage)."""

    _command = ""

    def __init__(self, *, transform=None, target_transform=None, **flags) -> None:
        self.transform = transform
        self.target_transform = target_transform
        # The engine (see FractalDB): decided in the process that draws; the command line's own
        # stages are the CPU engine's (open clouds, fractaldb.torch's CPU path, draw on them).
        self._device = _device(
            flags.pop("backend", "auto"), flags.pop("gpu", None), flags.pop("egl_device", None),
            flags.pop("gl_memory", GL_MEMORY),
        )
        flags = dict(_spell(self._command, flags), threads=1, quiet=True, backend="cpu")
        self._argv = _checked(["fractaldb", self._command, *_flags(flags)], type(self).__name__)
        self._pid: Optional[int] = None
        self._ds = None
        self._dataset()  # validate now: bad input raises here

    def _dataset(self):
        # Made once: a forked worker keeps the parent's prepared dataset (it holds no threads or
        # device state, and its open clouds are the worker's own copy); an unpickled one (a spawn
        # or forkserver worker) is made from the parent's preparation, not prepared again.
        if self._ds is None:
            self._ds = _engine().Units(self._argv, getattr(self, "_prepared", None), **self._device)
            self._pid = os.getpid()
        return self._ds

    def __getstate__(self):
        state = super().__getstate__()
        if self._ds is not None:
            state["_prepared"] = self._ds.prepared()
        return state

    def key(self, i: int) -> Tuple[int, int, int, int]:
        """(class, row, instance, flip) of sample ``i``: RCDB's (class, group of 100 instances,
        instance, 1); MV-FractalDB's (class, model, view, 1)."""
        return self._dataset().key(i)

    def sample(self, i: int, epoch: int = 0) -> Tuple[np.ndarray, int]:
        """Sample ``i``: (uint8 array H x W x 3, its class label). ``epoch`` must be 0: these
        families have one set of images."""
        ds = self._dataset()
        data, label = ds.sample(i, epoch)
        return np.frombuffer(data, dtype=np.uint8).reshape(ds.shape), label

    def sample_into(self, i: int, out: np.ndarray, epoch: int = 0) -> int:
        """Writes sample ``i`` into ``out`` (a writable, C-contiguous uint8 array of H x W x 3, or
        H x W x 1 for the gray value alone) with no intermediate copy; returns its label."""
        return self._dataset()._sample_into(i, out, epoch)

    @property
    def per_cloud(self) -> int:
        """Samples per cloud: ids ``[k * per_cloud, (k+1) * per_cloud)`` come from one stretch
        of a stream (RCDB) or whole models (MV-FractalDB), drawn in order when opened."""
        return self._dataset().per_cloud


class RCDB(_Units):
    """RCDB (``fractaldb rcdb``'s flags as keywords: ``num_classes`` (``numof_classes``), ``instances``
    (``numof_instances``),
    ``image_size``, ``vertex_num``, ...). ``file_name(i)`` is the image's path under ``--save_root``."""

    _command = "rcdb"


class MVFractalDB(_Units):
    """MV-FractalDB and ExFractalDB (``fractaldb mvfdb``'s flags as keywords: ``num_classes``
    (``classes``), ``weight_rows``, ``views`` (``"random:N"`` for ExFractalDB views), ``image_size``
    (``img_size``), ``model_seed``, ``view_seed``...). The search and models run when it is made.

    ``backend="auto"`` is the CPU engine here, also on a GPU: MV-FractalDB's views follow the GL
    driver's point rule, measured equal to the original's goldens on llvmpipe only (the CPU engine
    reproduces llvmpipe's arithmetic); ``backend="gl"`` draws on the GPU all the same."""

    _command = "mvfdb"
