#!/usr/bin/env bash
# Benchmark `sftok-prep shard` next to the Python converters of ../shared/bench (byte copy and
# PIL re-encode), interleaved round-robin by run_bench.py on the same fake ImageNet in one run.
#
#   tools/bench-shard.sh [WORK_DIR] [REPEATS]     (default bench-out/shard, 3 rounds)
#
# Fake tree: `sftok-prep synth` 20 classes × 50 images (ImageNet-like sizes, ~110 KB mean).
# Shard size 100 for everyone (the baseline's default). Each of our runs starts from an empty
# output folder, otherwise it would resume and skip the work.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mkdir -p "${1:-$root/bench-out/shard}" && cd "${1:-$root/bench-out/shard}" && pwd)"
repeats="${2:-3}"
bench="${SFTOK_BENCH_DIR:-$root/../shared/bench}"
py="$root/.venv/bin/python"
bin="$root/target/debug/sftok-prep"
[ -x "$py" ] || { echo "error: $py is missing: run tools/setup.sh first" >&2; exit 1; }
[ -f "$bench/run_bench.py" ] || { echo "error: $bench/run_bench.py not found: set SFTOK_BENCH_DIR" >&2; exit 1; }
(cd "$root" && cargo build --bin sftok-prep)

data="$work/fake_imagenet"
if [ ! -d "$data/train" ]; then
    "$bin" synth --out "$data" --classes 20 --per-class 50 --val 0 --seed 0
fi

rust() { # NAME OUT_SUBDIR EXTRA_FLAGS: one run_bench command line
    echo "$1=rm -rf {work}/$2 && $bin shard {data} --split train --out {work}/$2 --shard-size 100 $3 --bench-result $1"
}
"$py" "$bench/run_bench.py" --work "$work" --data "$data" --repeats "$repeats" \
    --only shard_copy,shard_reencode \
    --add "$(rust shard_rust shards_rust "--verify header")" \
    --add "$(rust shard_rust_full shards_rust_full "--verify full")"

# Ratios of medians from the run just made, and our peak RSS.
"$py" - "$work" <<'PY'
import glob, json, os, statistics, sys
log = max(glob.glob(os.path.join(sys.argv[1], "results-*.jsonl")), key=os.path.getmtime)
rows = [json.loads(l) for l in open(log)]
def med(cmd, key="images_per_s"):
    v = [r[key] for r in rows if r["cmd"] == cmd and isinstance(r.get(key), float)]
    return statistics.median(v) if v else float("nan")
print("\nratios (median images/s):")
print("  shard_rust (--verify header, byte copy) / python copy     = %.2fx" % (med("shard_rust") / med("shard_copy")))
print("  shard_rust_full (--verify full)         / python reencode = %.2fx" % (med("shard_rust_full") / med("shard_reencode")))
print("peak RSS (VmHWM, MB; includes libtorch mapped at start): header %.0f, full %.0f"
      % (med("shard_rust", "peak_rss_MB"), med("shard_rust_full", "peak_rss_MB")))
PY
