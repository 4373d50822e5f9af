#!/usr/bin/env bash
# The one command to run on a lent GPU machine (at most 550 s on one H200 or H100; the exact
# device call is in docs/verification.md):
#
#   scripts/gpu_check.sh OUT_DIR                  # on the GPU, from the checkout, nothing fetched
#   scripts/gpu_check.sh --only STEP OUT_DIR      # rerun one step (env and summary run too)
#   scripts/gpu_check.sh --dry-run OUT_DIR        # on a CPU: the same plumbing on tiny shapes
#
# Exit code: 0 every step done; 3 a step failed or was stopped at its limit (the files are
# valid and say which); 1 the files are not what the device can bring back; 2 bad arguments.
# It writes 8 files, json and markdown, in OUT_DIR itself (the device returns at most 8 files,
# at most 2 folders down) and commits nothing. Each one exists from the start, its rows
# "not reached", and is rewritten as results come in, so whatever is killed, the files that
# come back are valid and say how far each step got. The steps, in order, the most wanted
# first (a lease is 15 minutes of device time, the machine's start included):
#   env.json        versions, GPU, driver, the wheels installed, whether the peers import
#   trl.json        the TRL drop-in against TRL's own Triton kernel, H x N x beta, and a
#                   torch.profiler trace of one drop-in call (bench/gpu/trl.py)
#   realistic.json  bf16, N = 16384: logits in at V = 152064 and fused linear at H = 3584
#                   against the valid-rows floors and Liger, TRL, torch.compile
#   rest.json       JSD, log-probs, sparse teacher, reverse KL and the CORD loss at N = 1024,
#                   4096, 16384, launch configs (bench/gpu/check.py)
#   tests.json      the CUDA cases of every kernel (fp32, bf16; compiled kernels): tests/gpu
#                   and each test file with a device="cuda" case, in parallel (pytest -n)
#   vparallel.json  the vocabulary-parallel losses through a 1-rank NCCL group
#   train.json      5 bf16 steps of `cord train use_fused_linear=true` on the tiny model, and
#                   one step of the TRL drop-in (examples/trl_gkd_jsd.py) on CUDA
#   summary.md      all of it as tables
#
# Every step runs under `timeout -s INT` with a SIGKILL after a grace period: pytest still
# writes its junit report, a measuring step marks the row it was in "interrupted". A step that
# fails prints the last 30 lines of its log here. The peers' wheels come from .whl/ (made by
# scripts/gpu_wheels.sh where there is network) into a throwaway --target folder; the code runs
# from the checkout with PYTHONPATH (no pip install -e).
set -uo pipefail

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --dry-run (CPU plumbing), --only STEP (one of ${ALL_STEPS[*]})," \
         "--limit STEP=SECONDS (override a step's time limit), -h/--help"
}

ALL_STEPS=(env trl realistic rest tests vparallel train)
DRY_RUN=0
ONLY=""
OUT=""
LIMIT_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --only)
            ONLY="${2:-}"; shift
            if [[ ! " ${ALL_STEPS[*]} " == *" $ONLY "* ]]; then
                echo "gpu_check: --only takes one of ${ALL_STEPS[*]}, got '$ONLY'" >&2; exit 2
            fi ;;
        --limit)
            if [[ ! "${2:-}" =~ ^[a-z]+=[0-9]+$ ]]; then
                echo "gpu_check: --limit takes STEP=SECONDS, got '${2:-}'" >&2; exit 2
            fi
            LIMIT_ARGS+=("$2"); shift ;;
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
# Logs stay after the run (their tails go to stdout and into the step's file).
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cord-gpu-check.XXXXXX")"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET CORD_BLOCK_V CORD_NUM_WARPS
DRY=()
[ "$DRY_RUN" = 1 ] && DRY=(--dry-run)
STEPS=("${ALL_STEPS[@]}")
[ -n "$ONLY" ] && STEPS=(env "$ONLY")
[ "$ONLY" = env ] && STEPS=(env)
START=$SECONDS

# Hard time limits in seconds, and the grace between SIGINT and SIGKILL. On the GPU they add
# up to 470 s (540 with every grace spent), inside the device call's timeout_s of 550
# (docs/verification.md): with a start of 60-120 s, about 230 s of the 900 s lease are left
# for one --only rerun on the warm machine. A measuring step's soft budget stops starting
# rows 15 s before its limit (a quarter of it, if that is less). The dry run's limits only
# guard a loaded CPU.
GRACE=10
if [ "$DRY_RUN" = 1 ]; then
    declare -A LIMIT=([env]=60 [trl]=90 [realistic]=60 [rest]=60 [tests]=120 [vparallel]=60
                      [train]=60)
    WORKERS=1
else
    declare -A LIMIT=([env]=30 [trl]=100 [realistic]=90 [rest]=80 [tests]=60 [vparallel]=40
                      [train]=70)
    WORKERS=8
fi
for pair in "${LIMIT_ARGS[@]}"; do LIMIT[${pair%%=*}]=${pair#*=}; done
LIMIT_FLAGS=()
for s in "${ALL_STEPS[@]}"; do LIMIT_FLAGS+=(--limit "$s=${LIMIT[$s]}"); done
say() { echo "gpu_check [$((SECONDS - START))s]: $*"; }

# limited NAME LIMIT CMD...: runs CMD under the limit, its output in $WORK/NAME.log; on failure
# prints the log's last 30 lines. Returns CMD's exit code (124/137: stopped at the limit).
limited() {
    local name="$1" limit="$2" rc t0=$SECONDS
    shift 2
    timeout -s INT -k "$GRACE" "$limit" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    LAST_SECONDS=$((SECONDS - t0))
    if [ "$rc" -ne 0 ]; then
        say "$name exited $rc after ${LAST_SECONDS}s (limit ${limit}s); last 30 lines of its log:"
        tail -n 30 "$WORK/$name.log" | sed 's/^/    | /'
    else
        say "$name done in ${LAST_SECONDS}s"
    fi
    return "$rc"
}
NOT_DONE=()
finish() {  # STEP RC: the step's outcome and log tail into its file
    [ "$2" -ne 0 ] && NOT_DONE+=("$1 (exit $2)")
    "$PY" -m bench.gpu.files finish "$OUT" "$1" "$2" "$LAST_SECONDS" "$WORK/$1.log" \
        --limit-s "${LIMIT[$1]}"
}

say "steps: ${STEPS[*]}; logs in $WORK"

# env: the wheels of the peers the image lacks, into a throwaway folder that must not shadow
# the image's own packages (only distributions the image does not have go in); then every
# file, every planned row "not reached" ("not run" for a step --only leaves out), and env.json.
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
    elif timeout -s INT -k "$GRACE" 30 "$PY" -m pip install -q --no-index --no-deps \
            --no-compile --no-cache-dir --target "$WORK/site" "${NEEDED[@]}" \
            > "$WORK/pip.log" 2>&1; then
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
        WHEELS="installed ${#NEEDED[@]} of $TOTAL wheels: $NAMES"
    else
        WHEELS="pip install from .whl/ failed: $(tail -n 2 "$WORK/pip.log" | tr '\n' ' ')"
    fi
fi
say "$WHEELS"
limited env "${LIMIT[env]}" "$PY" -m bench.gpu.check env "$OUT" "${DRY[@]}" --wheels "$WHEELS" \
    --steps "$(IFS=,; echo "${STEPS[*]}")" "${LIMIT_FLAGS[@]}"
RC=$?
[ -f "$OUT/env.json" ] || { say "env wrote no files: nothing to fill in"; exit 1; }
finish env $RC

step_tests() {  # the CUDA cases of every kernel, compiled, in parallel
    local files
    mapfile -t files < <("$PY" -m bench.gpu.files cuda-tests)
    # The dry run proves the plumbing (xdist, junit, skip reasons) on the newest CUDA cases.
    [ "$DRY_RUN" = 1 ] && files=(tests/gpu tests/test_jsd.py)
    CORD_TEST_COMPILED=1 limited tests "${LIMIT[tests]}" "$PY" -m pytest -q -p no:cacheprovider \
        -rfEs -n "$WORKERS" -m "cuda or gpu" --junitxml="$WORK/tests.xml" "${files[@]}"
    local rc=$?
    "$PY" -m bench.gpu.files tests "$OUT" "$WORK/tests.xml" "${files[@]}"
    finish tests "$rc"
}

step_measure() {  # trl | realistic | rest | vparallel, with a fresh Triton and inductor cache
    local step="$1"
    local limit="${LIMIT[$step]}"
    local soft=$((limit - (limit / 4 < 15 ? limit / 4 : 15)))
    TRITON_CACHE_DIR="$(mktemp -d "$WORK/triton-$step.XXXX")" \
    TORCHINDUCTOR_CACHE_DIR="$(mktemp -d "$WORK/inductor-$step.XXXX")" \
        limited "$step" "$limit" "$PY" -m bench.gpu.check measure "$OUT" "$step" "${DRY[@]}" \
        --budget-s "$soft"
    finish "$step" $?
}

step_train() {  # cord train on the tiny model, then one step of the TRL drop-in
    local steps=5 args=(model=tiny dataset_audio=tone dataset_size=16
        per_device_train_batch_size=4 num_generations=2 max_completion_length=16
        use_fused_linear=true report_to=[none] save_steps=1000 "output_dir=$WORK/train")
    # cord train gets 4/7 of the step's limit (40 s of 70 on the GPU), the drop-in the rest.
    local cord=$((LIMIT[train] * 4 / 7)) rc t0=$SECONDS
    if [ "$DRY_RUN" = 1 ]; then
        steps=1; args+=(bf16=false max_completion_length=8)
    else
        args+=(bf16=true)
    fi
    limited train "$cord" "$PY" -m cord.cli train "${args[@]}" "max_steps=$steps"
    rc=$?
    "$PY" -m bench.gpu.files train "$OUT" cord_train "$WORK/train.log" "$rc" "$LAST_SECONDS"
    if [ "$DRY_RUN" = 0 ]; then  # the dry run leaves it to tests/test_examples.py (CPU)
        limited trl_gkd $((LIMIT[train] - cord)) "$PY" examples/trl_gkd_jsd.py --device cuda
        local gkd=$?
        "$PY" -m bench.gpu.files train "$OUT" trl_gkd "$WORK/trl_gkd.log" "$gkd" "$LAST_SECONDS"
        [ "$rc" -eq 0 ] && rc=$gkd
    fi
    LAST_SECONDS=$((SECONDS - t0))
    finish train "$rc"
}

for step in "${STEPS[@]}"; do
    case "$step" in
        tests) step_tests ;;
        trl|realistic|rest|vparallel) step_measure "$step" ;;
        train) step_train ;;
    esac
done

# The summary, and a check of what the device would bring back.
rm -f "$OUT"/.*.tmp
"$PY" -m bench.gpu.summary "$OUT"
"$PY" -m bench.gpu.files validate "$OUT" || exit 1
# The headline here too, the Steps table last: the device returns the end of stdout (12,000
# characters), so what is cut first is the drop-in's table, which trl.json holds anyway.
section() { sed -n "/^## $1/,/^## $2/p" "$OUT/summary.md" | sed '$d'; }
section "The TRL drop-in" "CUDA tests"
section "CUDA tests" "The rest"
section "Steps" "The TRL drop-in"
say "done in $((SECONDS - START))s: $OUT/summary.md"
if [ "${#NOT_DONE[@]}" -gt 0 ]; then
    say "steps that did not finish: ${NOT_DONE[*]} (rerun one with --only STEP)"
    exit 3
fi
