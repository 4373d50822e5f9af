#!/usr/bin/env bash
# The one command to run on a lent GPU machine (<= 8 minutes on one H100):
#
#   scripts/gpu_check.sh OUT_DIR            # on the GPU, from the checkout, nothing fetched
#   scripts/gpu_check.sh --dry-run OUT_DIR  # on a CPU: the same plumbing on tiny shapes (CI)
#
# It writes at most 8 files, json and markdown, under OUT_DIR and commits nothing:
#   env.json             versions, wheels, GPU
#   tests.json           the gpu-marked tests (tests/gpu) and the cuda cases of the kernel
#                        tests, compiled (CORD_TEST_COMPILED=1), from junit reports
#   logits_sweep.json    bf16 logits in, N in {4096, 16384}, V = 151936, fwd+bwd vs the copy
#                        bandwidth floor; cord_kernels, naive torch, torch.compile, LigerJSD
#   fused_linear.json    H = 3584, V = 152064, N = 16384 against torch.mm, TRL, Liger
#   launch_variants.json BLOCK_V 4096/8192 x 8/16 warps, and V = 151643 (unaligned rows)
#   train.json           a 5-step bf16 `cord train use_fused_linear=true` on the tiny model
#   summary.md           all of it as tables
#
# The image has torch, triton, transformers, accelerate, pytest, pytest-benchmark, hypothesis,
# psutil and matplotlib but no network. The peers' wheels come from .whl/ (made beforehand by
# scripts/gpu_wheels.sh) and go into a throwaway --target folder; the code runs from the
# checkout with PYTHONPATH=. (no pip install -e). Every step has its own time limit, so a hung
# step costs its share and the rest still runs.
set -uo pipefail

usage() {
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --dry-run (CPU plumbing check), -h/--help"
}

DRY_RUN=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_check: unknown option $1" >&2; usage >&2; exit 2 ;;
        *)
            if [ -n "$OUT" ]; then
                echo "gpu_check: one output folder expected, got '$OUT' and '$1'" >&2; exit 2
            fi
            OUT="$1" ;;
    esac
    shift
done
if [ -z "$OUT" ]; then
    echo "gpu_check: missing OUT_DIR (where the json and markdown files go)" >&2
    usage >&2
    exit 2
fi

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO" || exit 2
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cord-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET CORD_BLOCK_V CORD_NUM_WARPS
DRY=()
[ "$DRY_RUN" = 1 ] && DRY=(--dry-run)
START=$SECONDS

# Time limits in seconds: 430 on the GPU, which leaves ~50 s of the 8 minutes for the wheels,
# four short python calls and the summary. The dry run's limits only guard a loaded CPU.
if [ "$DRY_RUN" = 1 ]; then
    T_GPU_TESTS=300; T_CUDA_SUITE=300; T_MEASURE=300; T_TRAIN=300
else
    T_GPU_TESTS=75; T_CUDA_SUITE=110; T_MEASURE=180; T_TRAIN=65
fi
say() { echo "gpu_check [$((SECONDS - START))s]: $*"; }

# 1. Wheels of the peers the image lacks, into a throwaway folder. Only the distributions the
#    image does not have are installed: the folder comes first on sys.path, and must not
#    shadow the image's own packages (the image may well have requests, httpx, ...).
WHEELS="no .whl/ folder (run scripts/gpu_wheels.sh on a machine with network first)"
if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
    mapfile -t NEEDED < <("$PY" -c '
import importlib.metadata as md, sys
for wheel in sys.argv[1:]:
    try:
        md.version(wheel.rsplit("/", 1)[-1].split("-")[0])
    except md.PackageNotFoundError:
        print(wheel)' "$REPO"/.whl/*.whl)
    TOTAL=$(ls "$REPO"/.whl/*.whl | wc -l)
    NAMES="$(for w in "${NEEDED[@]}"; do basename "$w" | cut -d- -f1; done | tr '\n' ' ')"
    if [ "${#NEEDED[@]}" -eq 0 ]; then
        WHEELS="the image already has all $TOTAL distributions of .whl/"
    elif [ "$DRY_RUN" = 1 ]; then
        WHEELS="dry run: would install ${#NEEDED[@]} of $TOTAL wheels: $NAMES"
    elif "$PY" -m pip install --quiet --no-index --no-deps --target "$WORK/site" \
            "${NEEDED[@]}" > "$WORK/pip.log" 2>&1; then
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
        WHEELS="installed ${#NEEDED[@]} of $TOTAL wheels: $NAMES"
    else
        WHEELS="pip install from .whl/ failed: $(tail -n 2 "$WORK/pip.log" | tr '\n' ' ')"
    fi
fi
say "$WHEELS"
"$PY" -m bench.gpu_check env "$OUT" "${DRY[@]}" --wheels "$WHEELS"

# 2. Tests, compiled kernels, each suite in a fresh process.
run_pytest() {  # name, time limit, pytest args...
    local name="$1" limit="$2"
    shift 2
    say "pytest $name (limit ${limit}s)"
    CORD_TEST_COMPILED=1 timeout "$limit" "$PY" -m pytest -q -p no:cacheprovider -rs \
        --junitxml="$WORK/$name.xml" "$@" > "$WORK/$name.log" 2>&1
    say "pytest $name exited $?: $(tail -n 1 "$WORK/$name.log")"
}
run_pytest gpu_tests "$T_GPU_TESTS" tests/gpu
# Every cuda case of the suite on the GPU; in the dry run two files prove the plumbing.
CUDA_PATHS=(tests)
[ "$DRY_RUN" = 1 ] && CUDA_PATHS=(tests/test_kl.py tests/test_launch_config.py)
run_pytest cuda_suite "$T_CUDA_SUITE" -m cuda "${CUDA_PATHS[@]}"
"$PY" -m bench.gpu_check tests "$OUT" "${DRY[@]}" "$WORK/gpu_tests.xml" "$WORK/cuda_suite.xml"

# 3. Measurements (each file is rewritten after every row, so a timeout keeps what finished).
say "measure (limit ${T_MEASURE}s)"
timeout "$T_MEASURE" "$PY" -m bench.gpu_check measure "$OUT" "${DRY[@]}" \
    --budget-s $((T_MEASURE - 25)) > "$WORK/measure.log" 2>&1
say "measure exited $?: $(tail -n 1 "$WORK/measure.log")"

# 4. A short bf16 training run of the tiny model through the fused-linear head.
STEPS=5
TRAIN_ARGS=(model=tiny dataset_audio=tone dataset_size=16 per_device_train_batch_size=4
            num_generations=2 max_completion_length=16 use_fused_linear=true
            report_to=[none] save_steps=1000 "output_dir=$WORK/train")
if [ "$DRY_RUN" = 1 ]; then
    STEPS=1; TRAIN_ARGS+=(bf16=false max_completion_length=8)
else
    TRAIN_ARGS+=(bf16=true)
fi
say "cord train, $STEPS steps (limit ${T_TRAIN}s)"
T0=$SECONDS
timeout "$T_TRAIN" "$PY" -m cord.cli train "${TRAIN_ARGS[@]}" "max_steps=$STEPS" \
    > "$WORK/train.log" 2>&1
RC=$?
"$PY" -m bench.gpu_check train "$OUT" "${DRY[@]}" "$WORK/train.log" "$RC" $((SECONDS - T0))
say "cord train exited $RC"

# 5. Summary and a check of what was written.
rm -f "$OUT"/*.partial
"$PY" -m bench.gpu_check summary "$OUT" "${DRY[@]}"
"$PY" -m bench.gpu_check validate "$OUT" || exit 1
say "done in $((SECONDS - START))s: $OUT/summary.md"
