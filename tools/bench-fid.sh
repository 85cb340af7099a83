#!/usr/bin/env bash
# FID benchmark next to the Python baselines, in one run_bench.py rotation (same machine, same
# load): Inception feature throughput (random weights, 256×256 uint8 inputs, pytorch-fid's input
# pipeline) against pytorch-fid at 1 and 2 threads and in float64, and the 2048-d Fréchet
# distance against pytorch-fid's scipy-sqrtm implementation on the same mu/sigma files.
# Prints run_bench.py's table, then the ratios and the value agreement.
#
#   tools/bench-fid.sh [WORK_DIR] [REPEATS]      (defaults: target/bench-fid, 3)
#
# Needs tools/setup.sh's venv; pytorch-fid 0.3.0 (the baseline) is installed once, without
# dependencies (torch/torchvision/scipy come from the venv), into $SFTOK_CACHE/bench-pytorch-fid-0.3.0.
# sftok-eval is built in the dev profile: dependencies are optimised there and the time is spent
# inside libtorch either way.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(realpath -m "${1:-$root/target/bench-fid}")"
repeats="${2:-3}"
bench="$(realpath "$root/../shared/bench")"
py="$root/.venv/bin/python"
[ -x "$py" ] || { echo "bench-fid.sh: $py missing: run tools/setup.sh first" >&2; exit 1; }
[ -f "$bench/run_bench.py" ] || { echo "bench-fid.sh: $bench/run_bench.py not found" >&2; exit 1; }

cache="${SFTOK_CACHE:-$HOME/.cache/sftok}"
fidpkg="$cache/bench-pytorch-fid-0.3.0"
if ! PYTHONPATH="$fidpkg" "$py" -c "import pytorch_fid" 2>/dev/null; then
  echo "bench-fid.sh: installing pytorch-fid==0.3.0 (baseline only) into $fidpkg" >&2
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$fidpkg" pytorch-fid==0.3.0
fi
export PYTHONPATH="$fidpkg${PYTHONPATH:+:$PYTHONPATH}"

(cd "$root" && cargo build --quiet --bin sftok-eval)
eval_bin="$root/target/debug/sftok-eval"

mkdir -p "$work"
stats="$work/stats"
[ -f "$stats/b.npz" ] || "$py" "$bench/bench_fid_py.py" --write-example-stats "$stats"

# The value check uses the user-facing command on the same files (statistics-only inputs).
fid_json="$("$eval_bin" fid "$stats/a.npz" "$stats/b.npz" --json --device cpu)"

# run_bench.py generates a fake ImageNet unless --data has a train/ folder; the FID benchmarks
# read no images, so an empty one skips that.
mkdir -p "$work/no-images/train"
"$py" "$bench/run_bench.py" --work "$work" --data "$work/no-images" --repeats "$repeats" \
  --only fid_1thread,fid_2threads,fid_1thread_f64 \
  --add "fid_rs_1thread=$eval_bin bench-features --threads 1" \
  --add "fid_rs_2threads=$eval_bin bench-features --threads 2" \
  --add "fid_rs_1thread_f64=$eval_bin bench-features --threads 1 --float64 --batch 16" \
  --add "frechet_py={py} {bench}/bench_fid_py.py --stats-a $stats/a.npz --stats-b $stats/b.npz" \
  --add "frechet_rs=$eval_bin bench-frechet $stats/a.npz $stats/b.npz"

log="$(ls -t "$work"/results-*.jsonl | head -1)"
FID_JSON="$fid_json" "$py" - "$log" <<'EOF'
import json, os, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
def med(cmd, key):
    vals = [r[key] for r in recs if r["cmd"] == cmd and isinstance(r.get(key), float)]
    return statistics.median(vals) if vals else float("nan")
print("\n# ratios (medians; > 1 means sftok is faster)")
for ours, theirs in (("fid_rs_1thread", "fid_1thread"), ("fid_rs_2threads", "fid_2threads"),
                     ("fid_rs_1thread_f64", "fid_1thread_f64")):
    print("%-20s images/s %.2f vs %.2f -> x%.2f   images/cpu_s %.2f vs %.2f -> x%.2f" % (
        ours, med(ours, "images_per_s"), med(theirs, "images_per_s"),
        med(ours, "images_per_s") / med(theirs, "images_per_s"),
        med(ours, "images_per_cpu_s"), med(theirs, "images_per_cpu_s"),
        med(ours, "images_per_cpu_s") / med(theirs, "images_per_cpu_s")))
py_s, rs_s = med("frechet_py", "seconds"), med("frechet_rs", "seconds")
py_v, rs_v = med("frechet_py", "value"), med("frechet_rs", "value")
cli_v = json.loads(os.environ["FID_JSON"])["fid"]
print("%-20s seconds %.3f (scipy sqrtm) vs %.3f -> x%.1f" % ("frechet 2048-d", py_s, rs_s, py_s / rs_s))
print("%-20s scipy %r, bench-frechet %r (rel %.1e), sftok-eval fid %r (rel %.1e)" % (
    "frechet value", py_v, rs_v, abs(rs_v - py_v) / abs(py_v), cli_v, abs(cli_v - py_v) / abs(py_v)))
ok = abs(cli_v - py_v) <= 1e-6 * abs(py_v) and abs(rs_v - py_v) <= 1e-6 * abs(py_v)
print("value agreement to 1e-6 relative:", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
EOF
