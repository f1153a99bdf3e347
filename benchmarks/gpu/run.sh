#!/usr/bin/env bash
# The GPU run: everything a lent GPU can tell us, in one command of under 9 minutes, every result under $OUT.
#
#   bash benchmarks/gpu/run.sh                        # on the GPU machine (carry .whl/ from prepare.sh)
#   bash benchmarks/gpu/run.sh --device cpu --tiny --out DIR --budget 240   # the dry run (tests/test_gpu_run.py)
#
# Options: --device cuda|cpu; --tiny (tiny models and sizes); --out DIR (default $OUT, else
# benchmarks/results/gpu); --budget SECONDS (the whole run, default 540); --parts a,b,... (default all:
# env,generate,pytest,ddp,matrix,pretrain; the summary always runs); --jets DIR (jets made already: no
# generation); --keep-jets DIR (generate into DIR and leave them there, for a second call on the same warm machine:
# --jets DIR --parts pretrain); --jets-per-class N (default 62,000: 310,000 jets, 304,500 of them for training);
# --wheels (install the carried wheels on a CPU too; on CUDA they always are).
#
# Parts, each its own process under `timeout`, so one that fails or overruns leaves the others' results:
#   wheels    the carried wheels (.whl/) installed into a --target folder (GPU machine only)
#   env       nvidia-smi, torch / CUDA versions, the commit                                  -> env.txt
#   generate  Pythia8 + FastJet jets on all cores but two, in the background, niced, until 55 % of the budget
#   pytest    the gpu-marked tests and the capture-failure test (110 s)                     -> pytest.txt
#   ddp       torchrun --nproc-per-node 1 (NCCL): DDP's path against one process's losses (60 s) -> ddp.json
#   matrix    S, B x batch 1024, 8192 x bf16, fp32 x compile + CUDA graph, eager, compile (bf16 and the targets
#             first, as time allows); the embedding; a profile of every setting that misses its target; until
#             generation's deadline                                                         -> matrix.json, profile.txt
#   pretrain  100 epochs of jBOT-B (batch 1024, the CUDA defaults) on the generated jets, stopped after the
#             epoch that would overrun the budget; its k-NN probe                            -> pretrain.json
#   summary   every part's status and time, every target's verdict                          -> summary.json
# All output also goes to run.log. Eight files in all (the device tool brings back at most eight). SIGTERM or
# Ctrl-C ends the running parts (what they wrote stays) and removes the scratch folder.
set -uo pipefail
cd "$(dirname "$0")/../.."

DEVICE=cuda TINY="" BUDGET=540 JETS="" KEEP_JETS="" PER_CLASS=62000 WHEELS=""
PARTS_WANTED=env,generate,pytest,ddp,matrix,pretrain
OUTDIR="${OUT:-benchmarks/results/gpu}"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --tiny) TINY="--tiny"; shift ;;
        --out) OUTDIR="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --jets) JETS="$2"; shift 2 ;;
        --keep-jets) KEEP_JETS="$2"; shift 2 ;;
        --parts) PARTS_WANTED="$2"; shift 2 ;;
        --jets-per-class) PER_CLASS="$2"; shift 2 ;;
        --wheels) WHEELS=1; shift ;;
        *) echo "run.sh: unknown option $1 (see the head of $0)" >&2; exit 2 ;;
    esac
done
PY="${PYTHON:-python3}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/jbot-gpu.XXXXXX")"
PARTS="$SCRATCH/parts.tsv"
LOG="$OUTDIR/run.log"
: >"$LOG"
START=$(date +%s)
END=$((START + BUDGET - 10))
GEN_END=$((START + BUDGET * 55 / 100))
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BENCH=benchmarks/gpu/bench.py
OPTS=(--device "$DEVICE" --scratch "$SCRATCH" $TINY)  # every subcommand's
trap 'rm -rf "$SCRATCH"' EXIT
# SIGTERM or Ctrl-C: each running part stopped (timeout passes the signal on to it; what it wrote stays), the
# scratch folder removed, exit 143 / 130
stop() {
    echo "=== stopped by $1: ending the running parts" | tee -a "$LOG"
    [ -f "$SCRATCH/pids" ] && kill -TERM $(cat "$SCRATCH/pids") 2>/dev/null
    wait
    exit "$2"
}
trap 'stop SIGTERM 143' TERM
trap 'stop SIGINT 130' INT

now() { date +%s; }
wanted() { [[ ",$PARTS_WANTED," == *",$1,"* ]]; }
# part NAME SECONDS CMD...: run CMD under a time box of SECONDS (at least 5), log it, record rc and time
part() {
    local name="$1" limit="$2" t0 rc
    shift 2
    [ "$limit" -lt 5 ] && limit=5
    t0=$(now)
    echo "=== $name (time box ${limit} s, at +$((t0 - START)) s): $*" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1 &  # waited for, so that a signal reaches stop() at once
    echo $! >>"$SCRATCH/pids"
    wait $!
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(now) - t0))" >>"$PARTS"
    echo "=== $name: exit $rc after $(($(now) - t0)) s" | tee -a "$LOG"
    return 0
}

if { [ "$DEVICE" = cuda ] || [ -n "$WHEELS" ]; } && compgen -G ".whl/*.whl" >/dev/null; then
    part wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SCRATCH/site" .whl/*.whl
    # PYTHONPATH comes before the machine's site-packages (typing-extensions, the one package both have, is newer
    # here); Pythia looks for its settings under sys.prefix unless PYTHIA8DATA says where they are
    export PYTHONPATH="$PYTHONPATH:$SCRATCH/site" PYTHIA8DATA="$SCRATCH/site/share/Pythia8/xmldoc"
fi
if [ -z "${JBOT_COMMIT:-}" ] && [ -f .whl/COMMIT ] && ! git rev-parse HEAD >/dev/null 2>&1; then
    export JBOT_COMMIT="$(cat .whl/COMMIT)"
fi

wanted env && part env 30 "$PY" "$BENCH" env "${OPTS[@]}" --out "$OUTDIR/env.txt"

GEN_PID=""
if [ -z "$JETS" ] && wanted generate; then
    JETS="${KEEP_JETS:-$SCRATCH/jets}"
    [ -n "$TINY" ] && PER_CLASS=100
    part generate $((GEN_END - $(now) + 60)) "$PY" "$BENCH" generate "${OPTS[@]}" --out "$JETS" \
        --jets-per-class "$PER_CLASS" --until "$GEN_END" $([ -n "$TINY" ] && echo "--workers 2 --chunk-size 25") &
    GEN_PID=$!
fi

# the gpu-marked tests live in these files (tests/test_gpu_run.py keeps the list complete), and the test of a
# failed capture runs where CUDA exists too
export PY OUTDIR GPU_TESTS="tests/train/test_gpu.py tests/train/test_fast_step.py"
wanted pytest && part pytest 110 bash -c '"$PY" -m pytest -q -p no:cacheprovider -m gpu $GPU_TESTS >"$OUTDIR/pytest.txt" 2>&1
    rc=$?
    "$PY" -m pytest -q -p no:cacheprovider \
        tests/train/test_fast_step.py::test_a_failed_capture_goes_on_eagerly_unless_graphs_were_required \
        >>"$OUTDIR/pytest.txt" 2>&1 || rc=1
    exit $rc'

wanted ddp && part ddp 60 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 "$BENCH" ddp "${OPTS[@]}" \
    --out "$OUTDIR/ddp.json"

if [ -n "$TINY" ]; then
    MATRIX=(--sizes S --batches 64 --precisions fp32 --round-s 0.2 --profile-all)
else
    MATRIX=()
fi
wanted matrix && part matrix $((GEN_END - $(now) + 30)) "$PY" "$BENCH" matrix "${OPTS[@]}" \
    --out "$OUTDIR/matrix.json" --profile "$OUTDIR/profile.txt" --until "$GEN_END" --jets "${JETS:-none}" \
    "${MATRIX[@]}"

[ -n "$GEN_PID" ] && wait "$GEN_PID"
if [ -n "$TINY" ]; then
    PRETRAIN=(--epochs 3 --batch 64 --planned-jets 350)
else
    PRETRAIN=()
fi
if wanted pretrain && [ -n "$JETS" ]; then
    part pretrain $((END - $(now))) "$PY" "$BENCH" pretrain "${OPTS[@]}" --data "$JETS" \
        --out "$OUTDIR/pretrain.json" --until "$((END - 5))" "${PRETRAIN[@]}"
fi

part summary 30 "$PY" "$BENCH" summary "${OPTS[@]}" --dir "$OUTDIR" --parts "$PARTS"
sed -n '/^=== summary (/,/^=== summary:/p' "$LOG" | sed '1d;$d'
echo "run.sh: $(($(now) - START)) s in all; results in $OUTDIR"
