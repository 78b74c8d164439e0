#!/usr/bin/env bash
# Install what the benchmarks need; safe to run again (each step is skipped when done).
#
#   Debian packages: nginx (the mirror), libnginx-mod-http-echo (per-request latency),
#                    aria2 (aria2c), curl, time (GNU time: peak RSS of each measured process)
#   Python packages: matplotlib, psutil, hf_transfer (the project's `bench` extra)
#   benchmarks/.venv-onnx120: onnx==1.20.1, the last release with onnx.hub, for the comparison
#
# Usage: bash benchmarks/setup.sh        (as root, or with sudo available)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || python=python

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo_cmd=(sudo); fi
fi

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_echo_module.so ] || missing+=(libnginx-mod-http-echo)
command -v aria2c >/dev/null || missing+=(aria2)
command -v curl >/dev/null || missing+=(curl)
[ -x /usr/bin/time ] || missing+=(time)
command -v sha256sum >/dev/null || missing+=(coreutils)

if [ "${#missing[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null; then
        echo "setup: installing ${missing[*]} from Debian's packages"
        "${sudo_cmd[@]}" apt-get update -qq
        # nginx first: the echo module's package depends on the matching nginx build.
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null \
            || echo "setup: some packages could not be installed; the run falls back" \
                    "(python mirror, fewer peers)" >&2
    else
        echo "setup: no apt-get; install ${missing[*]} by hand (the run falls back without)" >&2
    fi
else
    echo "setup: Debian packages present"
fi

pip_missing=()
for mod in matplotlib psutil hf_transfer; do
    "$python" -c "import $mod" 2>/dev/null || pip_missing+=("$mod")
done
if [ "${#pip_missing[@]}" -gt 0 ]; then
    echo "setup: pip install ${pip_missing[*]}"
    "$python" -m pip install -q "${pip_missing[@]}"
else
    echo "setup: matplotlib, psutil, hf_transfer present"
fi

venv="$here/.venv-onnx120"
if ! "$venv/bin/python" -c "import onnx, onnx.hub; assert onnx.__version__ == '1.20.1'" \
        2>/dev/null; then
    echo "setup: creating $venv with onnx==1.20.1"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "onnx==1.20.1"
else
    echo "setup: $venv present (onnx 1.20.1)"
fi
echo "setup: done"
