#!/usr/bin/env bash
# The quality bench (`python -m benchmarks.quality`) on a CUDA machine, one slice per call of the device `run` tool,
# each slice ending inside BUDGET seconds (default 540: a run call's 600 s limit less transfers), its results under
# $OUT. docs/quality.md "Running it on a GPU" says what each slice costs (estimates) and how the calls add up.
#
#   scripts/device_bench.sh WORLD PART          WORLD: tinybirds | finebirds      PART, in this order:
#     ladder  the real-only ladder on the GPU (both networks, 10/5/2-shot, 2 seeds, 300..9600 steps, parallel
#             processes) -> $OUT/downstream_protocol_cuda.json: what downstream.CONVERGED_STEPS should be for GPU runs
#     a       generate + score every arm of `make bench-quality` (--no-downstream); meanwhile the real and real_x4
#             arms of every block; then 10-shot, both networks, the arms that decide issues 24/25 (CORE)
#     b       10-shot, both networks, every other downstream arm
#     c       5-shot, both networks, every downstream arm
#     d       2-shot, both networks, every downstream arm
# Every part but `ladder` scores the arms first (images cached on a warm machine; a fresh one regenerates them, seeded
# as on the CPU: image caches are too large to travel) and ends by refilling the world's downstream section from every
# run cached so far. What comes back in $OUT: quality.json (benchmarks/results/quality.json with this world's section
# from this GPU), quality.md (docs/quality.md regenerated), downstream.json (the run cache: copy it to
# outputs/bench_quality_<WORLD>_cuda/ here and name that folder in the next call's `carry`), bench.log.
#
# Run call (a session with a device; the wheels: docs/quality.md):
#   run(command="scripts/device_bench.sh finebirds a", timeout_s=600, carry=[".whl", "outputs/bench_quality_finebirds_cuda"])
# Env: JOBS (worker processes sharing the GPU, default 12), BUDGET (seconds, default 540), PY (default python3);
# for a smoke test on a CPU (tiny settings, other arms): DEVICE=cpu, ARMS, DOWN, CORE, PRESETS, EXTRA (more options
# for every bench command), e.g. DEVICE=cpu ARMS=o=higfa,guide=oracle DOWN="cfg o" CORE=o PRESETS="cfg higfa"
# EXTRA="--per-source 1 --steps 2 --test-per-class 1 --downstream-steps 3 --seeds 0 --archs test_resnet".
set -uo pipefail
set -m  # every background job in its own process group: a slice out of time is stopped with all its workers

WORLD=${1:?usage: scripts/device_bench.sh WORLD PART (tinybirds|finebirds; ladder|a|b|c|d)}
PART=${2:?usage: scripts/device_bench.sh WORLD PART (ladder|a|b|c|d)}
case "$WORLD" in tinybirds|finebirds) ;; *) echo "WORLD $WORLD: use tinybirds or finebirds" >&2; exit 2 ;; esac
case "$PART" in ladder|a|b|c|d) ;; *) echo "PART $PART: use ladder, a, b, c or d" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.." || exit 2
JOBS=${JOBS:-12}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
BUDGET=${BUDGET:-540}
PY=${PY:-python3}
OUT=${OUT:-outputs/device_out}
START=$(date +%s)
CACHE=${CACHE:-outputs/bench_quality_${WORLD}_cuda}  # in the tree: kept on a warm machine, carried when small
CORE=${CORE:-cfg higfa-oracle higfa-tuned-boot-pgd higfa-judged-boot-pgd higfa-judged-ensemble higfa-judged-ensemble-filtered}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT" "$CACHE"
LOG=$OUT/bench.log

left() { echo $((BUDGET - ($(date +%s) - START))); }
say() { echo "[$(date +%H:%M:%S) +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# run_for SECONDS CMD...: CMD in its own process group, stopped (TERM, then KILL) after SECONDS; its status
run_for() {
    local secs=$1; shift
    if [ "$secs" -le 20 ]; then say "skipped (no time left): $*"; return 124; fi
    "$@" >>"$LOG" 2>&1 &
    local pid=$!
    ( sleep "$secs"; kill -TERM -- -"$pid" 2>/dev/null; sleep 15; kill -KILL -- -"$pid" 2>/dev/null ) &
    local timer=$!
    wait "$pid"; local rc=$?
    kill -TERM -- -"$timer" 2>/dev/null; wait "$timer" 2>/dev/null
    return $rc
}

# --- the machine: the diffusers wheel (not in its image), torch sees the GPU
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
DEVICE=$DEVICE $PY - <<'EOF' 2>&1 | tee -a "$LOG" || exit 3
import os, sys, torch
try:
    import diffusers, timm, transformers
except ImportError as e:
    sys.exit(f"{e}: carry the wheels (.whl, docs/quality.md 'Running it on a GPU')")
if os.environ["DEVICE"] != "cpu" and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: this script is for the GPU machine (DEVICE=cpu: a smoke test)")
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__}, {gpu}, diffusers {diffusers.__version__}, timm {timm.__version__}, "
      f"transformers {transformers.__version__}")
EOF
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader 2>&1 | tee -a "$LOG"
fi

if [ "$PART" = ladder ]; then
    # one process per (network, shots, seed), each its own file; merged at the end (protocol.summarise)
    LAD=$CACHE/ladder; mkdir -p "$LAD"
    ARCHS=${LADDER_ARCHS:-test_resnet resnet18-pre}
    case " $ARCHS " in *" resnet18-pre "*)  # once, before the processes that use it
        say "pretraining resnet18-pre on $WORLD's disjoint species"
        run_for $(($(left) - 60)) $PY -c "
from benchmarks.quality import protocol
from higfa.world.catalog import make_world
protocol.pretrained_file(protocol.ARCHITECTURES['resnet18-pre'], make_world('$WORLD'), '$CACHE', device='$DEVICE')"
    esac
    pids=()
    for arch in $ARCHS; do for shots in ${LADDER_SHOTS:-10 5 2}; do for seed in ${LADDER_SEEDS:-0 1}; do
        # shellcheck disable=SC2086
        $PY -m benchmarks.quality.protocol --world "$WORLD" --device "$DEVICE" --arch $arch --shots $shots --seeds $seed \
            --ladder ${LADDER:-300 600 1200 2400 4800 9600} --cache "$CACHE" --out "$LAD/$arch-$shots-$seed.json" \
            >>"$LOG" 2>&1 &
        pids+=($!)
    done; done; done
    say "ladder: ${#pids[@]} processes"
    ( sleep $(($(left) - 30)); for p in "${pids[@]}"; do kill -TERM -- -"$p" 2>/dev/null; done ) &
    timer=$!
    for p in "${pids[@]}"; do wait "$p"; done
    kill -TERM -- -"$timer" 2>/dev/null; wait "$timer" 2>/dev/null
    # shellcheck disable=SC2046
    $PY -m benchmarks.quality.protocol --device "$DEVICE" --merge $(ls "$LAD"/*.json) \
        --out "$OUT/downstream_protocol_cuda.json" 2>&1 | tee -a "$LOG"
    say "ladder done"
    exit 0
fi

# --- the bench's arms: `make bench-quality`'s, from the Makefile
mkvar() { make -s --no-print-directory --eval='print-%: ; @echo $($*)' "print-$1" WORLD="$WORLD"; }
ARMS=${ARMS:-$(mkvar "QUALITY_ARMS_$WORLD")} || { echo "make is needed to read the arms from the Makefile" >&2; exit 3; }
DOWN=${DOWN:-$(mkvar "QUALITY_DOWNSTREAM_$WORLD")}
cp benchmarks/results/quality.json "$OUT/quality.json" 2>/dev/null || true
cp docs/quality.md "$OUT/quality.md" 2>/dev/null || true
# shellcheck disable=SC2206
BASE=($PY -m benchmarks.quality --world "$WORLD" --device "$DEVICE" --threads 1 --out "$CACHE" $EXTRA)
# shellcheck disable=SC2206
BENCH=("${BASE[@]}" --jobs "$JOBS" --results "$OUT/quality.json" --doc "$OUT/quality.md" ${PRESETS:+--presets $PRESETS}
       --extra $ARMS)

if [ "$PART" = a ]; then  # the arms that need no images, beside the generation (the GPU has room for both)
    say "real and real_x4, every block, beside the generation"
    "${BASE[@]}" --jobs $((JOBS / 2)) --presets --downstream --only-downstream --downstream-shots 10 5 2 >>"$LOG" 2>&1 &
    REAL=$!
fi
say "generate + score ($PART)"
run_for $(($(left) - 120)) "${BENCH[@]}" --downstream $DOWN --no-downstream || say "scoring stopped (rc $?)"
case "$PART" in
    a) SLICE=(--downstream-shots 10 --downstream $CORE) ;;
    b) SLICE=(--downstream-shots 10 --downstream $DOWN) ;;
    c) SLICE=(--downstream-shots 5 --downstream $DOWN) ;;
    d) SLICE=(--downstream-shots 2 --downstream $DOWN) ;;
esac
say "downstream: ${SLICE[*]}"
run_for $(($(left) - 75)) "${BENCH[@]}" --only-downstream "${SLICE[@]}" || say "downstream stopped (rc $?)"
if [ -n "${REAL:-}" ]; then kill -TERM -- -"$REAL" 2>/dev/null; wait "$REAL" 2>/dev/null; fi
say "downstream section from every cached run"
run_for $(($(left) - 5)) "${BENCH[@]}" --downstream $DOWN --downstream-from-cache || say "refill stopped (rc $?)"
cp "$CACHE/downstream.json" "$OUT/downstream.json" 2>/dev/null
$PY - "$OUT/quality.json" "$WORLD" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
w = json.load(open(sys.argv[1]))["worlds"][sys.argv[2]]
print("settings:", w["settings"].get("device"), "| downstream:", w["settings"].get("downstream_device"))
for arch, by in w.get("downstream", {}).get("converged", {}).items():
    for shots, b in by.items():
        cells = [f"{a} {v['mean']:.3f} ({len(v['seeds'])})" for a, v in b["arms"].items()]
        print(f"{arch} {shots} {b['steps']} steps: " + ("; ".join(cells) or "no runs yet"))
EOF
say "done"
