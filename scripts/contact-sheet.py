#!/usr/bin/env python3
"""A contact sheet of real outputs: per class, the four draw modes (flip0), the four flips of
patch_gray, RCDB images and MV-FractalDB views, made by running the fractaldb binary, so it can be
regenerated.

usage: scripts/contact-sheet.py [--bin ./target/release/fractaldb] [--out docs/contact-sheet.png]
       [--classes 4] [--size 362] [--iteration 200000] [--work DIR]
Needs Pillow. The README's image is this script's output at its defaults.
"""
import argparse
import os
import subprocess
import tempfile

from PIL import Image, ImageDraw

p = argparse.ArgumentParser()
p.add_argument("--bin", default="./target/release/fractaldb")
p.add_argument("--out", default="docs/contact-sheet.png")
p.add_argument("--classes", type=int, default=4)
p.add_argument("--size", type=int, default=362)
p.add_argument("--iteration", type=int, default=200_000)
p.add_argument("--thumb", type=int, default=128, help="cell size in the sheet")
p.add_argument("--work", default=None, help="keep the run's outputs here (default: a temporary directory)")
a = p.parse_args()

MODES = ["point_gray", "point_color", "patch_gray", "patch_color"]


def run(*argv):
    subprocess.run([a.bin, *argv, "-q"], check=True)


def sheet(work):
    n = a.classes
    run("search", "--categories", str(n), "--no-previews", "--out", os.path.join(work, "s"))
    classes = os.path.join(work, "s", f"csv_rate0.2_category{n}")
    geometry = ["--image-size-x", str(a.size), "--image-size-y", str(a.size), "--iteration", str(a.iteration)]
    for m in MODES:
        run("render", "--load-root", classes, "--out", os.path.join(work, m), "--draw-type", m,
            "--instance", "1", "--weight-rows", "2", "--backend", "cpu", *geometry)
    rcdb_size = a.size + a.size % 2
    run("rcdb", "--save_root", os.path.join(work, "rcdb"), "--numof_classes", str(n), "--numof_instances", "2",
        "--numof_thread", "1", "--image_size", str(rcdb_size), "--backend", "cpu")
    # MV-FractalDB: each class's unmodified model (multiplier row 6), two of its 12 views.
    run("mvfdb", "--save_root", os.path.join(work, "mvfdb"), "--classes", str(n), "--weight-rows", "6",
        "--img_size", str(a.size), "--backend", "cpu")
    columns = [(m.replace("_", " "), lambda c, m=m: os.path.join(work, m, c, f"{c}_02_count_0_flip0.png")) for m in MODES]
    columns += [(f"patch gray flip{f}" if f == 1 else f"flip{f}", lambda c, f=f: os.path.join(work, "patch_gray", c, f"{c}_02_count_0_flip{f}.png"))
                for f in (1, 2, 3)]
    columns += [(f"RCDB {k}", lambda c, k=k: os.path.join(work, "rcdb", "image", c, f"{c}_{k:04d}.png")) for k in (0, 1)]
    columns += [(f"MV-FractalDB v{k}", lambda c, k=k: os.path.join(work, "mvfdb", "images", f"0{c}", f"0{c}_00000_{k:03d}.png"))
                for k in (0, 3)]
    t, head, left = a.thumb, 18, 52
    img = Image.new("RGB", (left + len(columns) * t, head + n * t), "white")
    d = ImageDraw.Draw(img)
    for j, (title, _) in enumerate(columns):
        d.text((left + j * t + 4, 3), title, fill="black")
    for i in range(n):
        c = f"{i:05d}"
        d.text((4, head + i * t + t // 2 - 6), c, fill="black")
        for j, (_, path) in enumerate(columns):
            cell = Image.open(path(c)).convert("RGB").resize((t - 2, t - 2), Image.LANCZOS)
            img.paste(cell, (left + j * t + 1, head + i * t + 1))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    # 256 colours keep the file small for the README; the cells are the real outputs, scaled.
    img.quantize(256).save(a.out, optimize=True)
    print(f"contact sheet: {a.out} ({n} classes x {len(columns)} columns)")


if a.work:
    os.makedirs(a.work, exist_ok=True)
    sheet(a.work)
else:
    with tempfile.TemporaryDirectory() as w:
        sheet(w)
