"""Differential checks of RCDB's building blocks against the libraries the original calls.

lines SEGMENTS CANVASES SIZE: each line of SEGMENTS is "x0 y0 x1 y1"; CANVASES holds our SIZE x SIZE
    canvas for each (white, the segment drawn in black); Pillow's ImageDraw.line(width=1) must give
    the same pixels.
pnoise INPUTS: each line is "x value"; noise.pnoise1(x) must equal value exactly.
"""
import sys


def lines(seg_path, canvas_path, size):
    from PIL import Image, ImageDraw

    size = int(size)
    data = open(canvas_path, "rb").read()
    segs = [tuple(map(float, l.split())) for l in open(seg_path) if l.strip()]
    assert len(data) == len(segs) * size * size, "canvas file size"
    bad = []
    for i, (x0, y0, x1, y1) in enumerate(segs):
        im = Image.new("L", (size, size), 255)
        ImageDraw.Draw(im).line(((x0, y0), (x1, y1)), fill=0, width=1)
        ours = data[i * size * size:(i + 1) * size * size]
        if im.tobytes() != ours:
            bad.append(i)
    if bad:
        print(f"{len(bad)} of {len(segs)} segments differ from Pillow, e.g. {[segs[i] for i in bad[:5]]}")
        sys.exit(1)
    print(f"{len(segs)} segments equal Pillow's")


def pnoise(path):
    import noise

    n = 0
    for l in open(path):
        if not l.strip():
            continue
        x, v = map(float, l.split())
        want = noise.pnoise1(x)
        if want != v:
            print(f"pnoise1({x!r}) = {want!r}, ours {v!r}")
            sys.exit(1)
        n += 1
    print(f"{n} pnoise1 values equal the noise package's")


if __name__ == "__main__":
    {"lines": lines, "pnoise": pnoise}[sys.argv[1]](*sys.argv[2:])
