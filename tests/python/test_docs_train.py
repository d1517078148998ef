"""docs/train.md: every python block runs against a small dataset this build renders, with its
capitalised settings replaced; the DALI indexes are checked for format and offsets."""
import os
import re
import subprocess

import pytest

DOC = os.path.join(os.path.dirname(__file__), "../../docs/train.md")


@pytest.fixture(scope="module")
def data(tmp_path_factory, binary, classes):
    d = tmp_path_factory.mktemp("train")
    flags = ["--image-size-x", "48", "--image-size-y", "48", "--iteration", "3000", "--instance", "2", "-q"]
    subprocess.run([binary, "render", "--load-root", str(classes), "--out", str(d / "folders"), *flags], check=True)
    subprocess.run([binary, "render", "--load-root", str(classes), "--out", str(d / "wds"), "--format", "wds",
                    "--samples-per-shard", "50", "--dali-index", *flags], check=True)
    return d


def blocks():
    return re.findall(r"```python\n(.*?)```", open(DOC).read(), re.S)


@pytest.mark.parametrize("k", range(3))
def test_snippet_runs(k, data):
    pytest.importorskip("torch", reason="pip install torch")
    code = blocks()[k]
    for name, value in (("FOLDERS", repr(str(data / "folders"))), ("SHARDS", repr(str(data / "wds"))),
                        ("CROP", "32"), ("BATCH", "8"), ("WORKERS", "2")):
        code = re.sub(rf"^{name} = .*$", f"{name} = {value}", code, flags=re.M)
    scope = {}
    exec(compile(code, f"docs/train.md block {k}", "exec"), scope)
    images, labels = scope["images"], scope["labels"]
    assert len(images) == len(labels) == 8
    assert set(labels.tolist()) <= {0, 1}


def test_there_are_three_blocks():
    assert len(blocks()) == 3


def test_dali_indexes_point_at_the_members(data):
    import tarfile

    tars = sorted(p for p in os.listdir(data / "wds") if p.endswith(".tar"))
    assert tars
    for t in tars:
        lines = open(data / "wds" / t.replace(".tar", ".idx")).read().splitlines()
        head = lines[0].split()
        assert head[0] == "v1.2" and int(head[1]) == len(lines) - 1
        with tarfile.open(data / "wds" / t) as tf:
            members = {m.name: m for m in tf.getmembers()}
            for line in lines[1:]:
                f = line.split()
                # ext offset size name, per member
                for ext, off, size, name in zip(f[0::4], f[1::4], f[2::4], f[3::4]):
                    m = members[name]
                    assert name.endswith("." + ext) and int(off) == m.offset_data and int(size) == m.size
