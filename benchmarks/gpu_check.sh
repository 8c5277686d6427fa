#!/usr/bin/env bash
# One prepared GPU check, from the repo root, on one GPU (an H200 in mind), with no network but the package
# registries and a fresh machine: a venv, the CUDA torch wheel and distillkit from the registry, then
#   1. the paper-scale bench (qwen-to-gpt2 at its real size, random init, bf16): sft, kd, mta, sra, a bounded
#      number of steps each, MFU against 2*N_teacher + 6*N_student FLOP/token, with a host-sync count;
#   2. the chunk_size bench on the GPU (KD loss peak memory at the Qwen vocabulary, chunked vs not);
#   3. an FSDP2 smoke: `python -m distillkit.run strategy=fsdp strategy.devices=1 ...` on the tiny pair;
# each part under its own `timeout`, the whole under 8 minutes; a short table last.
#     bash benchmarks/gpu_check.sh            # env: VENV (.venv-gpu), TORCH (torch==2.13.0), STEPS (5)
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
TORCH=${TORCH:-torch==2.13.0}
STEPS=${STEPS:-5}
OUT=${OUT:-benchmarks/results}
LOG="$OUT/gpu_check"
mkdir -p "$LOG"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
export DISTILLKIT_CACHE=${DISTILLKIT_CACHE:-$PWD/.cache-gpu-check}
start=$(date +%s)
declare -A STATUS SECONDS_OF

part() {  # part NAME TIMEOUT_S CMD...: run, log, keep its status and time
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name (timeout ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$LOG/$name.log" 2>&1
  rc=$?
  SECONDS_OF[$name]=$(($(date +%s) - t0))
  case $rc in
    0) STATUS[$name]=ok ;;
    124 | 137) STATUS[$name]="timed out" ;;
    *) STATUS[$name]="failed ($rc)" ;;
  esac
  tail -n 15 "$LOG/$name.log"
}

# -- 0. environment (about 2-3 minutes: the CUDA wheel is large) ---------------------------------------
install() {
  test -x "$VENV/bin/python" || python3 -m venv "$VENV" || return 1
  "$VENV/bin/pip" install -q --upgrade pip || return 1
  "$VENV/bin/pip" install -q "$TORCH" || return 1  # the registry's default torch wheel is the CUDA build
  "$VENV/bin/pip" install -q -e ".[dev]" || return 1
  "$VENV/bin/python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
}
part install 240 bash -c "$(declare -f install); VENV=$VENV TORCH=$TORCH install"
PY="$VENV/bin/python"

if [ "${STATUS[install]}" = ok ]; then
  # -- 1. paper scale: 4 methods, 2 warm-up + STEPS timed steps each, one child process each ---------
  part paper 150 "$PY" benchmarks/bench_paper.py --methods sft kd mta sra --steps "$STEPS" --warmup 2 \
    --sync-debug --count-flops --out "$OUT/paper.json"
  # -- 2. method.chunk_size on the GPU: 4096 positions at V=151936, chunks of 512 --------------------
  part chunk 60 "$PY" benchmarks/bench_chunk.py --device cuda --tokens 4096 --chunk 512 --out "$OUT/chunk.json"
  # -- 3. FSDP2 smoke on the one GPU, the tiny pair on synthetic data ----------------------------------
  part fsdp 90 "$PY" -m distillkit.run strategy=fsdp strategy.devices=1 strategy.accelerator=gpu \
    trainer.max_steps=5 model=tiny model.teacher_sft.max_steps=5 data.synthetic.n_train=64 \
    data.synthetic.n_dev=8 data.synthetic.n_test=4 eval=none logger=none \
    hydra.run.dir="$LOG/fsdp_run"
  part report 30 "$PY" benchmarks/report.py --results "$OUT"
fi

# -- the table, last ---------------------------------------------------------------------------------
echo
echo "GPU check: $(($(date +%s) - start)) s in all; logs in $LOG/"
printf '%-8s %-14s %6s\n' part status seconds
for name in install paper chunk fsdp report; do
  printf '%-8s %-14s %6s\n' "$name" "${STATUS[$name]:-skipped}" "${SECONDS_OF[$name]:--}"
done
if [ -f "$OUT/paper.json" ] && [ "${STATUS[paper]:-}" = ok ]; then
  "$PY" - "$OUT/paper.json" "$OUT/chunk.json" <<'PYEOF'
import json, sys
p = json.load(open(sys.argv[1]))
print(f"\npaper scale: {p['pair']}, {p['batch']} x {p['seq_len']}, {p['device_name']}, peak {p['peak_tflops']} TFLOP/s")
print(f"{'method':<6} {'step ms':>8} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'GiB':>6} {'syncs':>6}")
for name, r in p["methods"].items():
    if "error" in r:
        print(f"{name:<6} failed: {r['error']}")
        continue
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    print(f"{name:<6} {r['step_s'] * 1e3:8.1f} {r['tokens_per_s']:9.0f} {r['achieved_tflops']:8.1f} {mfu:>6} "
          f"{r['peak_memory_gib']:6.1f} {r.get('sync_warnings', '-'):>6}")
try:
    c = json.load(open(sys.argv[2]))
    for row in c["rows"]:
        if "memory_ratio" in row:
            print(f"chunk_size={c['chunk_size']} {row['divergence']}: peak {row['unchunked']['loss_peak_mb']:.0f} -> "
                  f"{row['chunked']['loss_peak_mb']:.0f} MiB ({row['memory_ratio']:.2f}x), time {row['time_ratio']:.2f}x")
except (OSError, KeyError, ValueError):
    pass
PYEOF
fi
for name in install paper chunk fsdp; do [ "${STATUS[$name]:-}" = ok ] || exit 1; done
