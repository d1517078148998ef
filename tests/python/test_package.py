"""The installed wheel: samples equal the PNGs the Rust binary writes, the DataLoader dataset yields
each sample once over workers and ranks, errors are Python exceptions, Ctrl-C stops a render and
on-the-fly sampling inside one large unit, and the console script is the binary's command line."""
import csv
import hashlib
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import fractaldb
from conftest import run

SMALL = dict(image_size=48, iteration=3000, instances=2)


def small_flags(**extra):
    f = ["--image-size-x", "48", "--image-size-y", "48", "--iteration", "3000", "--instance", "2"]
    for k, v in extra.items():
        f += ["--" + k.replace("_", "-"), str(v)]
    return f


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize(
    "draw_type,mask_rng,flips",
    [
        ("patch_gray", None, (0, 1, 2, 3)),
        ("patch_color", "python:7", (0, 1, 2, 3)),
        ("point_color", None, (1, 3)),
        ("patch_gray", "counter:5", (2,)),
    ],
)
def test_samples_equal_the_binarys_pngs(tmp_path, binary, classes, draw_type, mask_rng, flips):
    extra = dict(draw_type=draw_type, flips=",".join(map(str, flips)))
    if mask_rng:
        extra["mask_rng"] = mask_rng
    run(binary, "render", "-q", "--load-root", str(classes), "--out", str(tmp_path), *small_flags(**extra))
    ds = fractaldb.FractalDB(classes, draw_type=draw_type, mask_rng=mask_rng, flips=flips, **SMALL)
    assert len(ds) == len([p for _, _, fs in os.walk(tmp_path) for p in fs if p.endswith(".png")])
    for i in range(len(ds)):
        image, label = ds.sample(i)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert label == ds.key(i)[0]
        assert np.array_equal(image, png(tmp_path / ds.file_name(i))), ds.file_name(i)


def test_golden_files_with_the_originals_masks(reference, tmp_path):
    """The original's own images (python:12345 masks), drawn in memory."""
    rows = list(csv.DictReader(open(os.path.join(reference, "golden", "manifest.csv"))))
    classes = tmp_path / "c"
    classes.mkdir()
    (classes / "00000.csv").write_bytes(open(os.path.join(reference, "categories", "00000.csv"), "rb").read())
    weights = os.path.join(reference, "weights", "weights_0.4.csv")
    checked = 0
    for mode in sorted({r["mode"] for r in rows}):
        ds = fractaldb.FractalDB(classes, draw_type=mode, mask_rng="python:12345", instances=1, weights=weights)
        names = {ds.file_name(i): i for i in range(len(ds))}
        for r in rows:
            if r["mode"] != mode:
                continue
            i = names[os.path.relpath(r["file"], mode)]
            image, _ = ds.sample(i)
            assert np.array_equal(image, png(os.path.join(reference, "golden", r["file"]))), r["file"]
            checked += 1
    assert checked == len(rows) == 16


def digest(image):
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def rendered(tmp_path, binary, classes, *extra):
    out = tmp_path / "r"
    run(binary, "render", "-q", "--load-root", str(classes), "--out", str(out), *small_flags(), *extra)
    return sorted(digest(png(os.path.join(d, f))) for d, _, fs in os.walk(out) for f in fs if f.endswith(".png"))


def test_dataloader_with_two_workers_yields_every_sample_once(tmp_path, binary, classes):
    torch = pytest.importorskip("torch", reason="pip install torch")  # CI installs it
    from fractaldb.torch import FractalDBIterable

    ds = FractalDBIterable(classes, **SMALL)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    got, labels = [], []
    for x, y in loader:
        got += [digest(im.numpy()) for im in x]
        labels += y.tolist()
    assert len(got) == len(ds) == 400
    assert sorted(got) == rendered(tmp_path, binary, classes)
    assert sorted(set(labels)) == [0, 1]
    # The open clouds mix: the first 16 are not the plan's first 16.
    first = [digest(fractaldb.FractalDB(classes, **SMALL).sample(i)[0]) for i in range(16)]
    assert got[:16] != first


def test_batch_mode_yields_the_same_samples_in_the_same_order(classes):
    torch = pytest.importorskip("torch", reason="pip install torch")
    from fractaldb.torch import FractalDBIterable

    one_gray = [digest(im.numpy()) for im, _ in FractalDBIterable(classes, open_clouds=12, **SMALL)]
    for draw_type in ("patch_gray", "patch_color", "point_gray"):
        one = [digest(im.numpy()) for im, _ in FractalDBIterable(classes, draw_type=draw_type, open_clouds=12, **SMALL)]
        batched = FractalDBIterable(classes, draw_type=draw_type, open_clouds=12, batch_size=64, **SMALL)
        loader = torch.utils.data.DataLoader(batched, batch_size=None, num_workers=0)
        got, sizes = [], []
        for images, labels in loader:
            assert images.dtype == torch.uint8 and images.shape[1:] == (48, 48, 3)
            sizes.append(len(labels))
            got += [digest(im.contiguous().numpy()) for im in images]
        assert got == one, draw_type
        assert sum(sizes) == len(one) and set(sizes[:-1]) == {64}, sizes
    # Two workers: batches cross shared memory (gray ones as one channel, expanded to RGB).
    loader = torch.utils.data.DataLoader(
        FractalDBIterable(classes, open_clouds=12, batch_size=64, **SMALL), batch_size=None, num_workers=2
    )
    got = sorted(digest(im.contiguous().numpy()) for images, _ in loader for im in images)
    assert got == sorted(one_gray)


def test_ranks_split_disjointly_with_equal_counts(tmp_path, binary, classes):
    pytest.importorskip("torch", reason="pip install torch")
    from fractaldb.torch import FractalDBIterable

    parts = [
        [digest(im.numpy()) for im, _ in FractalDBIterable(classes, rank=r, world_size=2, **SMALL)] for r in range(2)
    ]
    assert len(parts[0]) == len(parts[1]) == 200
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == rendered(tmp_path, binary, classes)
    # 3 ranks: 400 samples do not split evenly; every rank still yields ceil(400 / 3).
    counts = [len(list(FractalDBIterable(classes, rank=r, world_size=3, **SMALL))) for r in range(3)]
    assert counts == [134, 134, 134]


def test_set_epoch_draws_the_renders_epoch(tmp_path, binary, classes):
    pytest.importorskip("torch", reason="pip install torch")
    from fractaldb.torch import FractalDBIterable

    ds = FractalDBIterable(classes, **SMALL)
    ds.set_epoch(3)
    got = sorted(digest(im.numpy()) for im, _ in ds)
    assert got == rendered(tmp_path, binary, classes, "--epoch", "3")
    assert got != rendered(tmp_path / "e0", binary, classes)


def test_bad_input_raises_with_file_and_line(tmp_path, classes):
    d = tmp_path / "c"
    d.mkdir()
    (d / "00000.csv").write_text("0.1,0.2,0.3,0.4,0.5,0.6,0.5\nnot,a,number,0,0,0,0.5\n")
    with pytest.raises(ValueError, match=r"00000\.csv:2"):
        fractaldb.FractalDB(d)
    with pytest.raises(ValueError, match="no such class directory"):
        fractaldb.FractalDB(tmp_path / "missing")
    with pytest.raises(OSError, match="weights.csv"):
        fractaldb.FractalDB(classes, weights=str(tmp_path / "weights.csv"))
    with pytest.raises(ValueError, match="--image-size"):
        fractaldb.FractalDB(classes, image_size=0)
    with pytest.raises(IndexError):
        fractaldb.FractalDB(classes, **SMALL).sample(10**9)


@pytest.mark.parametrize("backend", ["cpu", "gl"])
def test_one_dataset_shared_by_eight_threads_gives_the_single_thread_samples(classes, backend):
    """The canvas cache was read after its lock was released and taken again: samples drawn by 8
    threads at once differed from the same samples drawn alone. Every thread now gets exactly the
    single-thread bytes, through sample(), sample_into() and batches; on the GL engine too (one
    engine thread serves the 8 threads' requests in turn); out-of-range indices raise IndexError."""
    import threading

    ds = fractaldb.FractalDB(classes, **SMALL)
    n = len(ds)
    alone = [ds.sample(i)[0].copy() for i in range(n)]
    shared = fractaldb.FractalDB(classes, backend=backend, **SMALL)
    bad = []

    def worker(k):
        rng = np.random.default_rng(k)
        out = np.empty(shared.shape, dtype=np.uint8)
        batch = np.empty((4,) + shared.shape, dtype=np.uint8)
        for i in rng.integers(0, n, size=300 if backend == "cpu" else 150):
            i = int(i)
            if k % 3 == 1:
                shared.sample_into(i, out)
                got = out
            elif k % 3 == 2:
                ids = [i, (i * 7) % n, i, (i + 1) % n]
                shared.sample_batch_into(ids, batch)
                bad.extend((k, j) for b, j in zip(batch, ids) if not np.array_equal(b, alone[j]))
                got = batch[0]
            else:
                got = shared.sample(i)[0]
            if not np.array_equal(got, alone[i]):
                bad.append((k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, f"{len(bad)} samples differed from the single-thread ones, e.g. {bad[:5]}"
    with pytest.raises(IndexError):
        ds[-n - 1]
    with pytest.raises(IndexError):
        ds[n]



def test_sample_into_checks_the_array_it_writes_to(classes):
    """The private ``_sample_into_address`` took a raw address: a bad one crashed the interpreter.
    The array itself is now checked next to the write: anything but a writable, C-contiguous uint8
    numpy.ndarray of the sample's shape raises, and nothing else is written."""
    ds = fractaldb.FractalDB(classes, **SMALL)
    h, w, c = ds.shape
    good = np.zeros((h, w, c), dtype=np.uint8)
    assert ds.sample_into(0, good) == ds.sample(0)[1]
    assert np.array_equal(good, ds.sample(0)[0])
    assert not hasattr(ds._dataset(), "_sample_into_address")

    class Lying(np.ndarray):
        pass

    wide = np.zeros((h, 2 * w, c), dtype=np.uint8)
    readonly = np.zeros((h, w, c), dtype=np.uint8)
    readonly.flags.writeable = False
    for bad, err in [
        (bytearray(h * w * c), TypeError),
        (0x1000, TypeError),
        (np.zeros((h, w, c), dtype=np.uint8).view(Lying), TypeError),
        (np.zeros((h, w, c), dtype=np.float32), ValueError),
        (np.zeros((h, w + 1, c), dtype=np.uint8), ValueError),
        (wide[:, ::2], ValueError),
        (readonly, ValueError),
    ]:
        with pytest.raises(err):
            ds.sample_into(0, bad)
    assert not wide.any() and not readonly.any()
    with pytest.raises(TypeError):
        ds._dataset()._sample_into(0, 0x1000)

PATIENCE = 600  # seconds: how long a test waits for an event before calling it a hang (never a speed check)


def _wait_for(what, cond, p):
    """Polls ``cond`` until it holds; fails if the child ``p`` exits first or after PATIENCE."""
    t0 = time.monotonic()
    while not cond():
        assert p.poll() is None, (what, p.communicate())
        assert time.monotonic() - t0 < PATIENCE, f"still waiting for {what}"
        time.sleep(0.02)


def _stop(p):
    """Sends SIGINT to ``p`` and returns its (stdout, stderr) once it has exited."""
    p.send_signal(signal.SIGINT)
    return p.communicate(timeout=PATIENCE)


def _child(code):
    # Python installs its KeyboardInterrupt handler only where SIGINT is not ignored, and a job a
    # non-interactive shell starts in the background inherits SIGINT ignored: the child restores
    # Python's handler itself, so the test does not depend on how its runner was started.
    code = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n" + code
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# One unit: class 00000, weight row 0, 100,000 instances x 4 flips.
LARGE_UNIT = dict(weight_rows="0", iteration=5000)


def test_ctrl_c_stops_a_render_inside_its_one_large_unit(tmp_path, classes):
    out = tmp_path / "o"
    p = _child(
        "import fractaldb, sys\n"
        "try:\n"
        f"    fractaldb.render({str(classes)!r}, {str(out)!r}, instance=100000, image_size_x=48, image_size_y=48,\n"
        f"                     quiet=True, threads=1, **{LARGE_UNIT!r})\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted'); sys.exit(3)\n"
    )
    # The event: the first finished image, so the signal comes inside the unit.
    _wait_for("a first image", lambda: any(out.rglob("*.png")), p)
    stdout, stderr = _stop(p)
    assert p.returncode == 3 and "interrupted" in stdout, (stdout, stderr)
    written = list(out.rglob("*.png"))
    assert len(written) < 400_000 // 2, f"{len(written)} of the unit's 400,000 images"
    assert not list(out.rglob("*.fdbtmp"))
    for f in written[:50]:
        Image.open(f).load()


def test_ctrl_c_stops_on_the_fly_sampling_inside_one_large_unit(classes):
    p = _child(
        "import fractaldb, sys\n"
        f"ds = fractaldb.FractalDB({str(classes)!r}, instances=100000, image_size=48, **{LARGE_UNIT!r})\n"
        "n = 0\n"
        "try:\n"
        "    for i in range(len(ds)):\n"
        "        ds.sample(i)\n"
        "        n += 1\n"
        "        if n == 1:\n"
        "            print('ready', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted after', n, flush=True); sys.exit(3)\n"
    )
    lines = []
    import threading

    reader = threading.Thread(target=lambda: lines.append(p.stdout.readline()), daemon=True)
    reader.start()
    _wait_for("the first sample", lambda: lines, p)
    assert lines == ["ready\n"], lines
    p.send_signal(signal.SIGINT)
    rest, stderr = p.communicate(timeout=PATIENCE)
    assert p.returncode == 3, (rest, stderr)
    n = int(rest.split("interrupted after")[1])
    # The unit (one cloud) has 400,000 samples; the dataset 800,000.
    assert 1 <= n < 400_000 // 2, n


def test_console_script_is_the_binarys_command_line(tmp_path, binary):
    script = os.path.join(os.path.dirname(sys.executable), "fractaldb")
    assert run(script, "--version").stdout == run(binary, "--version").stdout
    for tool, out in ((script, tmp_path / "py"), (binary, tmp_path / "bin")):
        run(tool, "search", "-q", "--categories", "2", "--no-previews", "--out", str(out))
        run(tool, "render", "-q", "--load-root", str(out / "csv_rate0.2_category2"), "--out", str(out / "img"), *small_flags())
    a = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "py") for d, _, fs in os.walk(tmp_path / "py") for f in fs)
    b = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "bin") for d, _, fs in os.walk(tmp_path / "bin") for f in fs)
    assert a == b and len(a) > 400
    for f in a:
        assert open(tmp_path / "py" / f, "rb").read() == open(tmp_path / "bin" / f, "rb").read(), f
    r = subprocess.run([script, "render", "--image-size-x", "0"], capture_output=True, text=True)
    assert r.returncode != 0 and "--image-size" in r.stderr
    # Ordinary mistakes read as the binary's: its message, its exit code, no Python traceback.
    for argv in (["render", "--load-root", str(tmp_path / "nope")], ["render", "--instanse", "3"]):
        py = subprocess.run([script, *argv], capture_output=True, text=True)
        rs = subprocess.run([binary, *argv], capture_output=True, text=True)
        assert (py.returncode, py.stderr) == (rs.returncode, rs.stderr), (py.stderr, rs.stderr)
        assert py.returncode != 0 and "Traceback" not in py.stderr
    with open("/dev/full", "w") as full:
        assert subprocess.run([script, "--help"], stdout=full, stderr=subprocess.PIPE).returncode == 1


def test_version_types_and_messages_inside_exceptions(tmp_path, binary, classes):
    import importlib.resources

    assert fractaldb.__version__ == run(binary, "--version").stdout.split()[-1]
    assert importlib.resources.files("fractaldb").joinpath("py.typed").is_file()
    with pytest.raises(TypeError, match="render\\(\\) got an unexpected keyword argument 'instanse'"):
        fractaldb.render(classes, tmp_path / "o", instanse=3)
    with pytest.raises(ValueError, match="FractalDB: invalid value 'dots' for draw_type=: "):
        fractaldb.FractalDB(classes, draw_type="dots")
    with pytest.raises(TypeError):
        fractaldb.FractalDB(classes, instanse=3)
    # Used to run a 1,000-class search, write it, then raise FileNotFoundError.
    with pytest.raises(TypeError, match="categories"):
        fractaldb.search(categories=None, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="categories"):
        fractaldb.search(categories=0, out=tmp_path / "s")


def run_docs_block(marker: str, settings: dict, classes) -> dict:
    """Runs the python block after ``marker`` in docs/python.md with small settings (each
    ``NAME = ...`` line of ``settings`` replaced, once) and returns its scope."""
    import re

    doc = open(os.path.join(os.path.dirname(__file__), "../../docs/python.md")).read()
    block = doc.split(marker)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    for name, value in dict(settings, CLASSES=repr(str(classes))).items():
        code, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, flags=re.M)
        assert n == 1, name
    code = code.replace("instances=10", "instances=2, iteration=3000")
    scope = {}
    exec(compile(code, "docs/python.md", "exec"), scope)
    return scope


SMALL_TRAINING = dict(EPOCHS="2", STEPS_PER_EPOCH="2", BATCH="8", WORKERS="2", IMAGE_SIZE="48")


def test_the_docs_pretraining_snippet_runs(classes):
    """docs/python.md's pre-training block, with small settings."""
    pytest.importorskip("torch", reason="pip install torch")
    marker = "<!-- The block below is run by tests/python/test_package.py"
    scope = run_docs_block(marker, SMALL_TRAINING, classes)
    assert scope["epoch"] == 1 and scope["step"] == 2


def test_the_docs_vit_recipe_runs(classes):
    """docs/python.md's DeiT-Tiny block (timm), with small settings: two steps of two epochs."""
    pytest.importorskip("timm", reason="pip install timm")
    marker = "<!-- The ViT block below is run by tests/python/test_package.py"
    scope = run_docs_block(marker, dict(SMALL_TRAINING, INPUT="32"), classes)
    assert scope["epoch"] == 1 and scope["step"] == 2
    assert scope["sched"].last_epoch == 4 and math.isfinite(scope["loss"].item())


def test_the_order_at_fractaldb_1k_proportions_mixes_batches_like_a_shuffle():
    """The on-the-fly order alone (sample ids, no pixels) at FractalDB-1k's proportions (1,000
    classes x 25 weight rows x 10 instances x 4 flips) with 8 workers and the production rule
    (OPEN_CLOUDS open clouds, a random pick among them): every sample once, each cloud computed
    once (plus at most one cut per worker boundary), and batches of 256 holding >= 180 distinct
    classes on average (a uniform shuffle: ~226; the old 256-image buffer: ~27)."""
    import random
    import statistics

    pytest.importorskip("torch", reason="pip install torch")
    from fractaldb.torch import OPEN_CLOUDS, mixed_order, stretch

    total, per_cloud, per_class, workers, bs = 1_000_000, 40, 1000, 8, 256
    seen = bytearray(total)
    distinct, opens, spreads = [], 0, []
    for w in range(workers):
        ids = stretch(total, per_cloud, 0, 0, (0, 1), (w, workers), bs)
        batch, first, last, n = [], {}, {}, 0
        for what, x in mixed_order(ids, per_cloud, OPEN_CLOUDS, random.Random(f"0/0/0/{w}"), 4):
            if what == "open":
                opens += 1
            if what != "sample":
                continue
            seen[x] += 1
            first.setdefault(x // per_cloud, n)
            last[x // per_cloud] = n
            n += 1
            batch.append(x // per_class)
            if len(batch) == bs:
                distinct.append(len(set(batch)))
                batch = []
        spreads += [(last[c] - first[c]) // bs for c in last]
    assert min(seen) == max(seen) == 1
    assert total // per_cloud <= opens <= total // per_cloud + workers - 1
    mean = statistics.mean(distinct)
    print(f"distinct classes per batch of 256: mean {mean:.1f}; a cloud's spread: median "
          f"{statistics.median(spreads)} batches of a worker's {len(distinct) // workers}")
    assert mean >= 180, mean


def test_the_loader_yields_the_rules_order_and_len_is_its_batch_count(classes):
    """End to end with pixels: a worker yields exactly ``sample(i)`` for the ids of the rule
    (``stretch`` + ``mixed_order``), and ``len(loader)`` is the number of batches yielded for any
    worker count, with and without ``drop_last``."""
    import random

    torch = pytest.importorskip("torch", reason="pip install torch")
    from fractaldb.torch import FractalDBIterable, mixed_order, stretch

    plain = fractaldb.FractalDB(classes, **SMALL)
    ds = FractalDBIterable(classes, open_clouds=5, batch_size=64, **SMALL)
    ids = stretch(len(plain), plain.per_cloud, 0, 0, (0, 1), (0, 1), 64)
    events = mixed_order(ids, plain.per_cloud, 5, random.Random("0/0/0/0"), 4)
    want = [i for what, i in events if what == "sample"]
    got = [(digest(im[:, :, :1].contiguous().numpy()), int(y)) for images, labels in ds for im, y in zip(images, labels)]
    gray = fractaldb.FractalDB(classes, png_gray=True, **SMALL)
    assert got == [(digest(gray.sample(i)[0]), plain.key(i)[0]) for i in want]
    for workers in (0, 1, 3):
        for drop_last in (False, True):
            it = FractalDBIterable(classes, batch_size=64, drop_last=drop_last, **SMALL)
            loader = torch.utils.data.DataLoader(it, batch_size=None, num_workers=workers)
            sizes = [len(y) for _, y in loader]
            assert len(loader) == len(sizes) == (6 if drop_last else 7), (workers, drop_last, sizes)
            assert sizes.count(64) == 6


def test_persistent_workers_see_set_epoch(tmp_path, binary, classes):
    torch = pytest.importorskip("torch", reason="pip install torch")
    from fractaldb.torch import FractalDBIterable

    ds = FractalDBIterable(classes, batch_size=50, **SMALL)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    epochs = []
    for e in (0, 3):
        ds.set_epoch(e)
        epochs.append(sorted(digest(im.contiguous().numpy()) for images, _ in loader for im in images))
    assert epochs[0] == rendered(tmp_path / "e0", binary, classes)
    assert epochs[1] == rendered(tmp_path / "e3", binary, classes, "--epoch", "3")
    # The dataset pickles: spawned workers (a fresh interpreter each) draw the same samples.
    ds.set_epoch(0)
    spawned = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    assert sorted(digest(im.contiguous().numpy()) for images, _ in spawned for im in images) == epochs[0]


def test_torchvision_transforms_get_pil_images_and_torch_conventions_hold(classes):
    pytest.importorskip("torch", reason="pip install torch")
    transforms = pytest.importorskip("torchvision.transforms")
    from fractaldb.torch import FractalDBIterable

    crop = transforms.Compose([transforms.RandomCrop(32), transforms.ToTensor()])
    ds = fractaldb.FractalDB(classes, transform=crop, target_transform=lambda y: y + 100, **SMALL)
    x, y = ds[5]
    assert tuple(x.shape) == (3, 32, 32) and y == 100 + fractaldb.FractalDB(classes, **SMALL).key(5)[0]
    assert ds.classes == ["00000", "00001"] and ds.class_to_idx == {"00000": 0, "00001": 1}
    assert [label for _, label in ds[2:6:2]] == [ds[2][1], ds[4][1]]
    assert len(ds[-3:]) == 3
    it = FractalDBIterable(classes, transform=crop, **SMALL)
    x, _ = next(iter(it))
    assert tuple(x.shape) == (3, 32, 32)
    assert it.classes == ds.classes
    with pytest.raises(ValueError, match="no transform"):
        FractalDBIterable(classes, transform=crop, batch_size=8, **SMALL)


def test_the_readme_python_snippet_runs(classes):
    """README's Python block as written (imports included), on two classes and in-process workers."""
    pytest.importorskip("torch", reason="pip install torch")
    import re

    readme = open(os.path.join(os.path.dirname(__file__), "../../README.md")).read()
    block = readme.split("<!-- The block below is run by tests/python/test_package.py. -->")[1]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    for old, new in (('"data/csv_rate0.2_category1000"', repr(str(classes))), ("num_workers=8", "num_workers=0")):
        assert old in code, old
        code = code.replace(old, new)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert tuple(scope["images"].shape) == (256, 362, 362, 3) and len(scope["labels"]) == 256


@pytest.mark.parametrize(
    "cls,command,flags",
    [
        ("RCDB", "rcdb", dict(numof_classes=3, numof_instances=2, image_size=64, numof_thread=1)),
        ("MVFractalDB", "mvfdb", dict(classes=2, weight_rows="0-2", views=3, img_size=40)),
        ("MVFractalDB", "mvfdb", dict(classes=2, weight_rows="0-1", views="random:2", img_size=32, point_size=3)),
    ],
)
def test_rcdb_and_mvfdb_samples_equal_the_commands_pngs(tmp_path, binary, cls, command, flags):
    """Each family's map-style dataset: sample(i) is the command's PNG at file_name(i), pixel for
    pixel, with its class as the label; the same keywords as the command's flags."""
    import pickle

    ds = getattr(fractaldb, cls)(**flags)
    argv = [a for k, v in flags.items() for a in ("--" + k.replace("_", "-"), str(v))]
    run(binary, command, "-q", "--backend", "cpu", "--save_root", str(tmp_path), *argv)
    pngs = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".png")]
    assert len(ds) == len(pngs) > 0
    assert sorted(ds.file_name(i) for i in range(len(ds))) == sorted(os.path.relpath(p, tmp_path) for p in pngs)
    for i in range(len(ds)):
        image, label = ds.sample(i)
        assert image.shape == ds.shape and image.dtype == np.uint8
        assert np.array_equal(image, png(tmp_path / ds.file_name(i))), ds.file_name(i)
        assert ds.classes[label] in ds.file_name(i).split("/")
    assert ds.class_to_idx[ds.classes[-1]] == len(ds.classes) - 1
    again = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(again[len(ds) - 1][0], ds[-1][0])
    with pytest.raises(TypeError, match=f"{cls}\\(\\) got an unexpected keyword argument 'no_such_flag'"):
        getattr(fractaldb, cls)(no_such_flag=1, **flags)
    with pytest.raises(ValueError):
        getattr(fractaldb, cls)(**dict(flags, **{next(iter(flags)): "x"}))


@pytest.mark.parametrize(
    "cls,flags",
    [
        ("RCDB", dict(numof_classes=3, numof_instances=150, image_size=32, numof_thread=1)),
        ("MVFractalDB", dict(classes=2, weight_rows="0-39", views=2, img_size=24)),
        ("MVFractalDB", dict(classes=2, weight_rows="0-3", views="random:2", img_size=32, point_size=3)),
    ],
)
@pytest.mark.parametrize("batch_size", [None, 16])
def test_rcdb_and_mvfdb_iterables_yield_every_sample_once_over_ranks_and_workers(cls, flags, batch_size):
    """The mixed iterables of the folder families: 2 ranks x 2 DataLoader workers, a few clouds
    open, yield each sample (the map-style pixels, themselves the command's PNGs) once, plus the
    padding of equal ranks; len() is the batch count; clouds are drawn from their cursors (a
    stretch boundary inside a cloud starts it mid-way)."""
    from collections import Counter

    torch = pytest.importorskip("torch", reason="pip install torch")
    import fractaldb.torch as ft

    ds = getattr(fractaldb, cls)(**flags)
    want = Counter((ds.sample(i)[0].tobytes(), ds.sample(i)[1]) for i in range(len(ds)))
    assert ds.per_cloud > 1 and len(ds) % ds.per_cloud == 0
    got: Counter = Counter()
    per_rank = []
    for rank in range(2):
        it = getattr(ft, cls + "Iterable")(open_clouds=3, rank=rank, world_size=2, batch_size=batch_size, **flags)
        loader = torch.utils.data.DataLoader(it, batch_size=None, num_workers=2)
        batches = list(loader)
        assert len(batches) == len(it) == len(loader)
        items = []
        for images, labels in batches:
            if batch_size is None:
                images, labels = images[None], torch.tensor([labels])
            assert images.shape[1:] == ds.shape
            items += [(im.contiguous().numpy().tobytes(), int(lb)) for im, lb in zip(images, labels)]
        per_rank.append(len(items))
        got.update(items)
    assert per_rank[0] == per_rank[1] == -(-len(ds) // 2)
    assert not (want - got), "a sample never came"
    assert sum(got.values()) - sum(want.values()) == len(ds) % 2
    assert set(got) <= set(want)


@pytest.mark.parametrize(
    "cls,flags",
    [
        ("RCDB", dict(numof_classes=2, numof_instances=3, image_size=32, numof_thread=1)),
        ("MVFractalDB", dict(classes=2, weight_rows="0-1", views=2, img_size=32)),
    ],
)
def test_rcdb_and_mvfdb_units_on_the_gl_engine_equal_the_cpu_engine(cls, flags):
    """backend="gl": whole units through the command's GL stages (llvmpipe here), the CPU pixels."""
    cpu = getattr(fractaldb, cls)(**flags)
    gl = getattr(fractaldb, cls)(backend="gl", **flags)  # llvmpipe in CI, as the Rust GL tests
    assert len(gl) == len(cpu) > 0
    for i in range(len(cpu)):
        assert np.array_equal(gl.sample(i)[0], cpu.sample(i)[0]), i


def test_a_pickled_mvfdb_dataset_carries_its_preparation_to_spawned_workers():
    """MV-FractalDB's search and model pass run once, in the parent: a pickled dataset carries them
    (its unpickled copy prepares nothing and draws the same pixels), so a ``spawn`` DataLoader's
    workers yield every sample once without searching again."""
    import pickle
    from collections import Counter

    torch = pytest.importorskip("torch", reason="pip install torch")
    from fractaldb.torch import MVFractalDBIterable

    flags = dict(classes=2, weight_rows="0-19", views=2, img_size=24)
    ds = fractaldb.MVFractalDB(**flags)
    again = pickle.loads(pickle.dumps(ds))
    assert again._dataset().reused_preparation and not ds._dataset().reused_preparation
    assert all(np.array_equal(again.sample(i)[0], ds.sample(i)[0]) for i in range(len(ds)))
    it = MVFractalDBIterable(batch_size=8, open_clouds=3, **flags)
    loader = torch.utils.data.DataLoader(it, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    got = Counter()
    for images, labels in loader:
        got.update((im.contiguous().numpy().tobytes(), int(lb)) for im, lb in zip(images, labels))
    want = Counter((ds.sample(i)[0].tobytes(), ds.sample(i)[1]) for i in range(len(ds)))
    assert got == want


GL_FAMILIES = [
    ("FractalDB", dict(draw_type="patch_gray", flips=[0, 3], **SMALL)),
    ("FractalDB", dict(draw_type="patch_color", mask_rng="python:7", image_size=40, iteration=2000, instances=2)),
    ("RCDB", dict(numof_classes=3, numof_instances=20, image_size=32, numof_thread=1)),
    ("MVFractalDB", dict(classes=2, weight_rows="0-3", views=2, img_size=32)),
]


def _family(cls, folder, **flags):
    return fractaldb.FractalDB(folder, **flags) if cls == "FractalDB" else getattr(fractaldb, cls)(**flags)


@pytest.mark.parametrize("cls,flags", GL_FAMILIES)
def test_every_family_draws_on_the_gl_engine_as_on_the_cpu(classes, cls, flags):
    """backend="gl" (llvmpipe here): a batch is one request to the process's engine (a context kept
    between batches), and its pixels are the CPU engine's (themselves the commands' PNGs), as RGB
    or as the one gray channel, ids in any order and repeated; sample(i) too."""
    cpu = _family(cls, classes, backend="cpu", **flags)
    gl = _family(cls, classes, backend="gl", **flags)
    assert (cpu.engine, gl.engine) == ("cpu", "gl")
    n = len(cpu)
    ids = [(i * 37) % n for i in range(min(n, 48))] + [0, 0]
    want = [cpu.sample(i) for i in ids]
    for ds, channels in ((gl, 3), (gl, 1), (cpu, 3), (cpu, 1)):
        if channels == 1 and cls == "FractalDB" and "color" in flags["draw_type"]:
            continue
        out = np.zeros((len(ids),) + cpu.shape[:2] + (channels,), np.uint8)
        labels = ds.sample_batch_into(ids, out)
        assert labels == [lb for _, lb in want]
        for j, (image, _) in enumerate(want):
            assert np.array_equal(out[j], image[:, :, :channels]), (ds.engine, channels, ids[j])
    assert np.array_equal(gl.sample(ids[5])[0], want[5][0])
    # Batches submitted ahead (fractaldb.torch keeps one in flight) are written in any order, once.
    first, second = gl._dataset()._batch_submit(ids[:5]), gl._dataset()._batch_submit(ids[5:9])
    out = np.zeros((4,) + cpu.shape, np.uint8)
    assert second.write_into(out) == [lb for _, lb in want[5:9]]
    assert all(np.array_equal(out[j], want[5 + j][0]) for j in range(4))
    out = np.zeros((5,) + cpu.shape, np.uint8)
    assert first.write_into(out) == [lb for _, lb in want[:5]] and np.array_equal(out[4], want[4][0])
    with pytest.raises(ValueError, match="written already"):
        first.write_into(out)
    # An empty batch, a wrong array.
    assert gl.sample_batch_into([], np.zeros((0,) + cpu.shape, np.uint8)) == []
    with pytest.raises(ValueError, match="sample_into needs"):
        gl.sample_batch_into([0, 1], np.zeros((1,) + cpu.shape, np.uint8))


def test_engine_keywords_are_checked():
    with pytest.raises(ValueError, match="backend must be"):
        fractaldb.RCDB(backend="vulkan", numof_classes=1)
    with pytest.raises(ValueError, match="gl_memory is in MiB"):
        fractaldb.RCDB(gl_memory=8, numof_classes=1)
    with pytest.raises(TypeError, match="gpu must be an int"):
        fractaldb.MVFractalDB(gpu="0", classes=1)
    # MV-FractalDB's auto stays on the CPU engine (no hardware here: every family's auto does).
    assert fractaldb.MVFractalDB(classes=1, weight_rows="0", views=1, img_size=16).engine == "cpu"


@pytest.mark.parametrize(
    "cls,flags,context,batch_size",
    # Every family forked, in batches and samples; spawned workers for one family (the pickled
    # preparations have their own tests).
    [(*f, c, b) for f in (GL_FAMILIES[0], GL_FAMILIES[2], GL_FAMILIES[3]) for c, b in (("fork", 8), ("fork", None))]
    + [(*GL_FAMILIES[0], "spawn", 8)],
)
def test_gl_iterables_yield_the_cpu_batches_in_forked_and_spawned_workers(classes, cls, flags, context, batch_size):
    """fractaldb.torch on the GL engine: the parent drew on its own engine first, then 2 DataLoader
    workers (fork or spawn) each make their own context and yield exactly the CPU engine's batches,
    in the same order (sample mode: requests of GL_CHUNK samples)."""
    torch = pytest.importorskip("torch", reason="pip install torch")
    import fractaldb.torch as ft

    def loader(backend):
        kw = dict(flags, backend=backend, open_clouds=5, batch_size=batch_size)
        make = getattr(ft, cls + "Iterable")
        it = make(classes, **kw) if cls == "FractalDB" else make(**kw)
        assert it.dataset.engine == backend  # the parent's own engine, before the fork
        return it, torch.utils.data.DataLoader(it, batch_size=None, num_workers=2, multiprocessing_context=context)

    def items(backend):
        it, ld = loader(backend)
        got = []
        for images, labels in ld:
            if batch_size is None:
                images, labels = images[None], torch.tensor([labels])
            got.append([(im.contiguous().numpy().tobytes(), int(lb)) for im, lb in zip(images, labels)])
        assert len(got) == len(it)
        return got

    cpu, gl = items("cpu"), items("gl")
    assert gl == cpu
    assert sum(map(len, gl)) == len(_family(cls, classes, **flags))


def test_gl_workers_make_their_own_egl_context(tmp_path):
    """The GL iterables really draw through EGL in the workers: with glvnd pointed at a vendor file
    that does not exist (the parent never opened EGL), an epoch of backend="gl" fails in the
    workers with the EGL error, where backend="cpu" and the working EGL yield every batch."""
    pytest.importorskip("torch", reason="pip install torch")
    code = (
        "import sys, torch, fractaldb.torch as ft\n"
        "it = ft.RCDBIterable(backend=sys.argv[1], batch_size=8, numof_classes=2, numof_instances=10,"
        " image_size=32, numof_thread=1)\n"
        "n = sum(len(l) for _, l in torch.utils.data.DataLoader(it, batch_size=None, num_workers=2))\n"
        "print('samples', n)\n"
    )
    bogus = dict(os.environ, __EGL_VENDOR_LIBRARY_FILENAMES=str(tmp_path / "none.json"))
    for backend, env, ok in (("gl", bogus, False), ("cpu", bogus, True), ("gl", dict(os.environ), True)):
        p = subprocess.run([sys.executable, "-c", code, backend], env=env, capture_output=True, text=True, timeout=600)
        if ok:
            assert p.returncode == 0 and "samples 20" in p.stdout, (backend, p.stderr[-2000:])
        else:
            assert p.returncode != 0 and "EGL" in p.stderr and "worker" in p.stderr, p.stderr[-2000:]


def test_bench_python_runs_on_both_engines_with_a_training_step_rate():
    """scripts/bench-python.py (what gpu-check.sh runs on an NVIDIA machine) with tiny settings: the
    GL engine in spawned workers, and the training-step rate of a model fed by the loader."""
    pytest.importorskip("torchvision", reason="pip install torchvision")
    import json

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "bench-python.py")
    for extra in (["--backend", "gl", "--start-method", "spawn"], ["--train", "resnet18", "--train-steps", "1"]):
        argv = [sys.executable, script, "--family", "rcdb", "--classes", "2", "--instances", "64",
                "--image-size", "64", "--threads", "1", *extra]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        r = json.loads(p.stdout.splitlines()[0])
        assert r["images"] == 128 and r["on_the_fly_samples_per_s"] > 0 and r["render_images_per_s"] > 0
        if "--train" in extra:
            assert r["train_steps"] == 1 and r["train_steps_per_s_fed"] > 0 and r["train_steps_per_s_alone"] > 0
        else:
            assert (r["backend"], r["start_method"]) == ("gl", "spawn")


def test_one_name_per_idea_in_every_function_and_family(tmp_path, classes):
    """fractaldb.NAMES: root, num_classes, instances, image_size and weights mean the same in
    search(), render(), FractalDB, RCDB and MVFractalDB; the commands' own names work too and give
    the same dataset; both names at once is a TypeError."""
    ds = fractaldb.FractalDB(root=classes, **SMALL)
    fractaldb.render(classes, tmp_path / "a", quiet=True, **SMALL)
    fractaldb.render(root=classes, out=tmp_path / "b", quiet=True, instance=2, image_size_x=48, image_size_y=48,
                     iteration=3000)
    for d in ("a", "b"):
        assert np.array_equal(png(tmp_path / d / ds.file_name(5)), ds.sample(5)[0])
    with pytest.raises(TypeError, match="name the same setting"):
        fractaldb.render(classes, tmp_path / "c", instances=2, instance=2)
    found = fractaldb.search(num_classes=2, out=tmp_path / "s", quiet=True, no_previews=True)
    assert len(found) == 2 and len(fractaldb.search(categories=2, out=tmp_path / "s2", quiet=True, no_previews=True)) == 2
    with pytest.raises(TypeError, match="same setting"):
        fractaldb.search(2, categories=2)
    a = fractaldb.RCDB(num_classes=2, instances=3, image_size=32, numof_thread=1)
    b = fractaldb.RCDB(numof_classes=2, numof_instances=3, image_size=32, numof_thread=1)
    assert len(a) == len(b) == 6 and np.array_equal(a.sample(5)[0], b.sample(5)[0])
    with pytest.raises(TypeError, match="same setting"):
        fractaldb.RCDB(num_classes=2, numof_classes=2)
    a = fractaldb.MVFractalDB(num_classes=2, image_size=24, weight_rows="0-1", views=2)
    b = fractaldb.MVFractalDB(classes=2, img_size=24, weight_rows="0-1", views=2)
    assert a.shape == b.shape == (24, 24, 3) and np.array_equal(a.sample(3)[0], b.sample(3)[0])


def test_a_pickled_rcdb_dataset_carries_its_class_starts():
    """RCDB's class starts (a stream state per class, found by replaying the streams) travel with a
    pickled dataset: the copy draws the same pixels without replaying, and really uses what it was
    handed (a tampered start changes that class's images, and only that class's); a preparation of
    other settings is refused."""
    import json
    import pickle

    flags = dict(num_classes=3, instances=4, image_size=32, numof_thread=1)
    ds = fractaldb.RCDB(**flags)
    again = pickle.loads(pickle.dumps(ds))
    assert again._dataset().reused_preparation
    assert all(np.array_equal(again.sample(i)[0], ds.sample(i)[0]) for i in range(len(ds)))
    state = ds.__getstate__()
    prepared = json.loads(state["_prepared"])
    _, words, idx = prepared["class_starts"][1]
    words[idx % 624] ^= 1 << 31  # the next word class 1's stream draws (or the first of its next twist)
    tampered = fractaldb.RCDB.__new__(fractaldb.RCDB)
    tampered.__dict__.update(state, _prepared=json.dumps(prepared))
    same = {i: np.array_equal(tampered.sample(i)[0], ds.sample(i)[0]) for i in range(len(ds))}
    assert all(same[i] for i in same if tampered.key(i)[0] != 1)
    assert not all(same[i] for i in same if tampered.key(i)[0] == 1)
    other = fractaldb.RCDB.__new__(fractaldb.RCDB)
    other.__dict__.update(fractaldb.RCDB(**dict(flags, image_size=48)).__getstate__(), _prepared=state["_prepared"])
    with pytest.raises(RuntimeError, match="other settings"):
        other.sample(0)
