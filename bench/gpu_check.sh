#!/usr/bin/env bash
# The check to run on a machine with a CUDA GPU: the tests, compiled and run on the GPU, then a
# timed sweep of the losses of logits at the full preset's shapes, then the linear cross-entropy's
# (bf16), everything written under OUTDIR. Needs no network. Each step is cut by a timeout, so
# the whole script ends within 7.5 minutes whatever the GPU (the timeouts below add up to 380 s,
# their kill grace periods to 70 s more).
#
#   bench/gpu_check.sh OUTDIR
#
# Run it from a checkout with lossbench installed (pip install -e ".[test]"). On a copy of the
# tree without .git, set LOSSBENCH_GIT_COMMIT=<commit> so that the results name their commit.
#
# OUTDIR receives:
#   environment.txt  date, nvidia-smi, Python/torch/triton versions, git commit
#   tests-gpu.log    python -m pytest tests/ -m gpu: the tests that need a GPU (CUDA graphs,
#                    more than 2^31 elements, the shapes the interpreter cannot run)
#   tests.log        the rest of tests/, kernels compiled on the GPU
#   bench.log        the sweep: a line per case, skips with reasons, the headline table
#   bench-linear.log the linear cross-entropy's sweep
#   benchmarks.csv   both sweeps' long-format CSV (results/README.md)
#   SUMMARY.md       best implementation per shape, speedups, agreement verdicts, and the
#                    static model's estimates beside the measured fractions of copy bandwidth
#   benchmark.json   pytest-benchmark's own record, extra figures in extra_info (and
#                    benchmark-linear.json)
#   plots.tar.gz     the plots
# To commit the run: copy benchmarks.csv into results/<device>/ (results/h200/ for an H200) and
# redraw the plots and SUMMARY.md there with `lossbench plot results/<device>`.
#
# Time: the GPU tests are cut at 60 s and the rest at 90 s (a cut run still names what it ran);
# the sweep stops starting cases after 2 minutes and is interrupted (SIGINT, so it still writes
# its CSV and plots) at 150 s; the linear sweep after 1 minute and at 80 s. The sweeps order
# cases from the peer shapes to the biggest, so a cut loses the biggest shapes; a longer sweep is
# the same command with a larger --max-minutes. The sweep leaves out `reference` (float64 at up
# to 2^30 elements says nothing about speed; the agreement column still compares every
# implementation with float64). The linear sweep leaves out `reference` too, whose fp32 logits at
# 32768 x 128256 are 17 GB a copy, and fp32.
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

timeout -s INT -k 15 60 "$python" -m pytest tests/ -m gpu -q -ra -p no:cacheprovider \
    2>&1 | tee "$outdir/tests-gpu.log" || status=1
timeout -s INT -k 15 90 "$python" -m pytest tests/ -m "not gpu" -q -ra -p no:cacheprovider \
    2>&1 | tee "$outdir/tests.log" || status=1

# A fresh folder: the CSV then holds this run alone, not rows merged from an earlier one.
results_dir=$(mktemp -d)/results
timeout -s INT -k 20 150 "$python" -m pytest bench/bench_losses.py --benchmark-only \
    --preset full --max-minutes 2 --results-dir "$results_dir" \
    --losses cross_entropy,softmax_focal_loss,binary_cross_entropy_with_logits,sigmoid_focal_loss \
    --impls torch,compile,triton,triton+compile,liger \
    --benchmark-json "$outdir/benchmark.json" -ra -p no:cacheprovider \
    2>&1 | tee "$outdir/bench.log" || status=1

# The linear cross-entropy into the same CSV (a run keeps the rows of the cases it did not run).
timeout -s INT -k 20 80 "$python" -m pytest bench/bench_losses.py --benchmark-only \
    --preset full --max-minutes 1 --results-dir "$results_dir" \
    --losses linear_cross_entropy --dtypes bf16 \
    --impls torch,compile,torch-chunked,triton,liger,cce,cce-filter \
    --benchmark-json "$outdir/benchmark-linear.json" -ra -p no:cacheprovider \
    2>&1 | tee "$outdir/bench-linear.log" || status=1

cp "$results_dir/benchmarks.csv" "$results_dir/SUMMARY.md" "$outdir/" || status=1
tar -czf "$outdir/plots.tar.gz" -C "$results_dir" plots || status=1
exit $status
