#!/usr/bin/env bash
# Downloads, on a machine with network, the wheels scripts/gpu_check.sh needs and the lent H200
# image lacks, into .whl/ (git-ignored), for CPython 3.12 on manylinux x86_64:
#
#   scripts/gpu_wheels.sh          # then carry .whl in the device call (docs/verification.md)
#
# Only what the image lacks (/work/.library/device/KINDS.md lists its packages: torch 2.11,
# triton, transformers, accelerate, pytest, pytest-xdist, pyarrow, pandas, xxhash, fsspec,
# huggingface-hub, requests, httpx, ... are there). No dependency resolution (--no-deps):
# every wheel is named with its version (those the tests here run with), the image provides
# the rest. gpu_check.sh installs them with `pip install --no-index --no-deps --target` into a
# throwaway folder, and only those whose distribution the image does not have.
# Then it checks that what travels (tracked and untracked-not-ignored files plus .whl/,
# counted as the device tool counts them) stays under 60 MiB of the tool's 64.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$REPO/.whl"
PY="${PYTHON:-python3}"
BUDGET_MIB=60

WHEELS=(
    liger-kernel==0.8.5     # the peer: LigerJSD, LigerFusedLinearJSDLoss (needs torch, triton)
    trl==1.16.0             # the peer: generalized_jsd_loss, ChunkedDivergenceFunction, ...
    datasets==5.2.0         # trl imports it (and the TRL drop-in example)
    dill==0.4.1             # datasets (< 0.4.2)
    multiprocess==0.70.19   # datasets (< 0.70.20)
    soundfile==0.14.0       # `cord train` reads audio through it (bundles libsndfile)
    cffi==2.0.0             # soundfile
    pycparser==3.0          # cffi
)

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" \
    --implementation cp --python-version 3.12 --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    "${WHEELS[@]}"

COUNT=$(ls "$DEST"/*.whl | wc -l)
if [ "$COUNT" -ne "${#WHEELS[@]}" ]; then
    echo "gpu_wheels: expected ${#WHEELS[@]} wheels, got $COUNT" >&2
    exit 1
fi
ls -l "$DEST"/*.whl | awk '{printf "  %8.1f KiB  %s\n", $5 / 1024, $NF}'
cd "$REPO"
"$PY" -m bench.gpu.files travel --carry .whl --limit-mib "$BUDGET_MIB"
