#!/usr/bin/env bash
# One-time (idempotent) set-up: a Python venv holding PyPI torch==2.13.0 — the libtorch that
# tch 0.26 builds against — plus the packages the tests use as oracles.
#
# The venv lives outside the clone, in ${SFTOK_CACHE:-$HOME/.cache/sftok}, so fresh clones and CI
# reruns skip the ~3 minute download. Inside the clone it leaves two ignored symlinks:
#   .libtorch -> <venv>/.../site-packages/torch   (read by .cargo/config.toml: LIBTORCH)
#   .venv     -> <venv>                           (the tests' Python oracle)
# It also makes sure libjpeg-turbo's and gloo's headers are there (Debian/Ubuntu: libjpeg-dev,
# libgloo-dev), for the shims pipeline/csrc/sftok_jpeg.c and model/csrc/sftok_c10d.cpp.
# Re-running it is a no-op unless tools/requirements-oracle.txt changed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SFTOK_CACHE:-$HOME/.cache/sftok}"
venv="$cache/venv-torch-2.13.0"
req="$root/tools/requirements-oracle.txt"
stamp="$venv/.sftok-requirements"

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null; then
  echo "setup.sh: no '$python' on PATH. Install Python 3.10+ (it is only a source of libtorch and a test oracle)." >&2
  exit 1
fi

# System headers, from Debian/Ubuntu packages when missing:
#   libjpeg-dev  libjpeg-turbo (the decoder PIL uses): the loader decodes JPEGs through it, pixel for pixel as PIL;
#   libgloo-dev  gloo's headers, which libtorch's c10d ProcessGroupGloo.hpp includes and the torch wheel lacks
#                (model/csrc/sftok_c10d.cpp: data-parallel training). Only headers are used: gloo itself is
#                linked into libtorch_cpu.
apt_install() { # package, the header that shows it is there, how to do without apt
  local pkg="$1" header="$2" otherwise="$3"
  [ -f "$header" ] && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null; then
    echo "setup.sh: installing $pkg" >&2
    $sudo apt-get install -y -q "$pkg" >/dev/null 2>&1 || {
      $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$pkg" >/dev/null
    }
  else
    echo "setup.sh: $header is missing and there is no apt-get: $otherwise" >&2
    exit 1
  fi
}
[ -n "${SFTOK_JPEG_INCLUDE:-}" ] || apt_install libjpeg-dev /usr/include/jpeglib.h \
  "install libjpeg-turbo's development package, or set SFTOK_JPEG_INCLUDE and SFTOK_JPEG_LIB to its include and lib directories"
[ -n "${SFTOK_GLOO_INCLUDE:-}" ] || apt_install libgloo-dev /usr/include/gloo/config.h \
  "install gloo's headers (github.com/facebookincubator/gloo), or set SFTOK_GLOO_INCLUDE to a directory holding gloo/"

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  : # venv is complete and current
else
  mkdir -p "$cache"
  if [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv"
    echo "setup.sh: creating $venv (first time: downloads torch==2.13.0, about 3 minutes)" >&2
    "$python" -m venv "$venv"
  else
    echo "setup.sh: updating $venv (requirements changed or an earlier set-up was interrupted)" >&2
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"   # written last: an interrupted install is redone next time
fi

torch_dir="$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
ln -sfn "$torch_dir" "$root/.libtorch"
ln -sfn "$venv" "$root/.venv"
echo "setup.sh: libtorch at $torch_dir" >&2
