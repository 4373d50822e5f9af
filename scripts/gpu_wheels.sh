#!/usr/bin/env bash
# Downloads, on a machine with network, the wheels scripts/gpu_check.sh needs and the lent GPU
# image lacks, into .whl/ (git-ignored, at most 64 MiB), for CPython 3.12 on manylinux x86_64:
#
#   scripts/gpu_wheels.sh          # then copy the checkout, .whl/ included, to the GPU machine
#
# No dependency resolution (--no-deps): every wheel is named here with its version, and the
# image provides the rest (torch, triton, transformers, accelerate, numpy, huggingface_hub,
# pyyaml, tqdm, filelock, fsspec, python-dateutil). gpu_check.sh installs them with
# `pip install --no-index --no-deps --target` into a throwaway folder and keeps only the
# modules the image does not already have, so nothing of the image is shadowed.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$REPO/.whl"
PY="${PYTHON:-python3}"
LIMIT_MIB=64

WHEELS=(
    # The peers the check compares against.
    liger-kernel==0.8.5         # LigerJSD, LigerFusedLinearJSDLoss (needs only torch, triton)
    trl==1.16.0                 # ChunkedDivergenceFunction; trl.trainer.utils imports the rest
    # What `import trl.trainer.utils` pulls in and the image lacks.
    datasets==4.8.5             # the newest datasets that accepts pyarrow 21
    pyarrow==21.0.0             # 43 MB: the smallest pyarrow datasets 4.8 and trl accept
    pandas==2.3.3               # 2.x: works with numpy 1.26 and 2.x (pandas 3 needs numpy 2)
    pytz==2025.2                # pandas 2.x imports it
    tzdata==2025.2              # pandas 2.x
    dill==0.4.1                 # datasets (< 0.4.2)
    multiprocess==0.70.19       # datasets (< 0.70.20), needs dill >= 0.4.1
    xxhash==3.5.0               # datasets
    # `cord train` reads audio through soundfile (cord/data/paired.py imports it).
    soundfile==0.13.1           # bundles libsndfile
    cffi==2.0.0                 # soundfile
    pycparser==2.23             # cffi
    # datasets imports httpx and requests at import; the image may have them (then unused).
    httpx==0.28.1
    httpcore==1.0.9
    h11==0.16.0
    anyio==4.9.0
    sniffio==1.3.1
    requests==2.32.5
    urllib3==2.5.0
    charset-normalizer==3.4.3
    certifi==2025.8.3
    idna==3.10
)

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" \
    --implementation cp --python-version 3.12 --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    "${WHEELS[@]}"

SIZE_KIB=$(du -sk "$DEST" | cut -f1)
COUNT=$(ls "$DEST"/*.whl | wc -l)
if [ "$COUNT" -ne "${#WHEELS[@]}" ]; then
    echo "gpu_wheels: expected ${#WHEELS[@]} wheels, got $COUNT" >&2
    exit 1
fi
if [ "$SIZE_KIB" -gt $((LIMIT_MIB * 1024)) ]; then
    echo "gpu_wheels: .whl/ holds $((SIZE_KIB / 1024)) MiB, over the ${LIMIT_MIB} MiB limit" >&2
    exit 1
fi
echo "gpu_wheels: $COUNT wheels, $((SIZE_KIB / 1024)) MiB in $DEST"
