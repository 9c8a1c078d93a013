#!/bin/bash
# Before/after of the restructuring (issue 9): the commit before it, checked out at /tmp/base
# (git worktree add /tmp/base 2148858), against this tree; each run a fresh process, alternating.
cd "$(dirname "$0")/../../.."
out=benchmarks/results/2026-11-25-restructure
for round in 1 2 3; do
  for which in base new; do
    for cfg in "fp32 16" "bf16 16" "fp32 1"; do
      set -- $cfg
      if [ $which = base ]; then src=/tmp/base/src; else src=src; fi
      PYTHONPATH=$src .venv/bin/python -m davit benchmark --model tiny --dtype $1 --batch-size $2 \
        --threads 2 --repeats 10 --warmup 2 --json $out/$which-$1-b$2-r$round.json
    done
  done
done
