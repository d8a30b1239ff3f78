#!/usr/bin/env bash
# Builds what a GPU machine needs to check the CUDA path without a Rust toolchain or this venv:
# the CUDA checks (tests/engine_cuda.rs) and the step bench, stripped, into gpu-bin/ (a few tens
# of MB). Run them there with scripts/gpu-check.sh against that machine's torch 2.11.0.
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-bin
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
executables() {
    # cargo prints one JSON message per artifact; the test and bench executables carry a path.
    python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
        print(msg["target"]["name"], msg["executable"])
'
}
{
    cargo test --release --test engine_cuda --no-run --message-format=json
    cargo bench --bench step --no-run --message-format=json
} | executables | while read -r name path; do
    cp "$path" "$out.tmp/$name"
    strip "$out.tmp/$name"
done
cp -r benches/py "$out.tmp/py"
rm -rf "$out" && mv "$out.tmp" "$out"
du -sh "$out"
