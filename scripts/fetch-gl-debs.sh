#!/usr/bin/env bash
# Downloads Debian's EGL loader packages (libegl1, libglvnd0, ...) into .gl/, for NVIDIA machines whose
# driver ships libEGL_nvidia and its vendor JSON but not the glvnd loader libEGL.so.1.
# .gl/ is git-ignored; carry it to the GPU machine and let scripts/gpu-check.sh unpack it there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gl /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update -qq
(cd .gl && apt-get $o download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
ls -l .gl
