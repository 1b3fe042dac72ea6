#!/usr/bin/env bash
# The check to run on a machine with a CUDA GPU: the tests, compiled and run on the GPU, then the
# full benchmark sweep of the losses of logits, then the linear cross-entropy's (bf16), everything
# written under OUTDIR. Needs no network; the sweeps stop starting new cases after 4.5 and 2.5
# minutes, so the whole script takes under 11 minutes on an H200 (estimated: not yet run there).
#
#   bench/gpu_check.sh OUTDIR
#
# Run it from a checkout with lossbench installed (pip install -e ".[test]"). On a copy of the
# tree without .git, set LOSSBENCH_GIT_COMMIT=<commit> so that the results name their commit.
#
# OUTDIR receives:
#   environment.txt  date, nvidia-smi, Python/torch/triton versions, git commit
#   tests.log        python -m pytest tests/ (kernels compiled on the GPU)
#   bench.log        the full sweep: a line per case, skips with reasons, the headline table
#   bench-linear.log the linear cross-entropy's sweep
#   benchmarks.csv   both sweeps' long-format CSV (results/README.md)
#   SUMMARY.md       best implementation per shape, speedups, agreement verdicts
#   benchmark.json   pytest-benchmark's own record, extra figures in extra_info (and
#                    benchmark-linear.json)
#   plots.tar.gz     the plots
# To commit the run: copy benchmarks.csv into results/<device>/ (results/h200/ for an H200) and
# redraw the plots and SUMMARY.md there with `lossbench plot results/<device>`.
#
# Time: the tests are cut at 140 s; the sweep skips the cases that would start after 4.5 minutes
# and is interrupted (SIGINT, so it still writes its CSV and plots) at 300 s; the linear sweep
# after 2.5 minutes and at 180 s. The linear sweep leaves out `reference`, whose fp32 logits at
# 32768 x 128256 are 17 GB a copy and whose time says nothing at that scale, and fp32.
set -uo pipefail
export PYTHONUNBUFFERED=1

outdir=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
status=0

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git commit: ${LOSSBENCH_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
    nvidia-smi
    "$python" - <<'PYTHON'
import platform

import torch
import triton

print(f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}")
print(f"device {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
PYTHON
} >"$outdir/environment.txt" 2>&1 || status=1

timeout -s INT -k 20 140 "$python" -m pytest tests/ -q -ra -p no:cacheprovider \
    2>&1 | tee "$outdir/tests.log" || status=1

# A fresh folder: the CSV then holds this run alone, not rows merged from an earlier one.
results_dir=$(mktemp -d)/results
timeout -s INT -k 30 300 "$python" -m pytest bench/bench_losses.py --benchmark-only \
    --preset full --max-minutes 4.5 --results-dir "$results_dir" \
    --losses cross_entropy,softmax_focal_loss,binary_cross_entropy_with_logits,sigmoid_focal_loss \
    --benchmark-json "$outdir/benchmark.json" -ra -p no:cacheprovider \
    2>&1 | tee "$outdir/bench.log" || status=1

# The linear cross-entropy into the same CSV (a run keeps the rows of the cases it did not run).
timeout -s INT -k 30 180 "$python" -m pytest bench/bench_losses.py --benchmark-only \
    --preset full --max-minutes 2.5 --results-dir "$results_dir" \
    --losses linear_cross_entropy --dtypes bf16 \
    --impls torch,compile,torch-chunked,triton,liger,cce,cce-filter \
    --benchmark-json "$outdir/benchmark-linear.json" -ra -p no:cacheprovider \
    2>&1 | tee "$outdir/bench-linear.log" || status=1

cp "$results_dir/benchmarks.csv" "$results_dir/SUMMARY.md" "$outdir/" || status=1
tar -czf "$outdir/plots.tar.gz" -C "$results_dir" plots || status=1
exit $status
