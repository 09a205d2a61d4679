#!/usr/bin/env bash
# Start-up with JAX's persistent compilation cache (benchmarks/README.md, "Compiled programs kept
# between commands"): wall seconds of the quickstart and of a compile-bound study, without a
# cache, with an empty one (cold) and with the same folder again (warm).
#   bash benchmarks/compile_cache.sh [ROUNDS]     (from the repository root; ~2 min per round)
set -euo pipefail
W=${WFLOW:-.venv/bin/wflow}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
t() { /usr/bin/time -f "%e" "$@" 2>&1 >/dev/null | tail -1; }
for round in $(seq "${1:-1}"); do
  rm -rf "$tmp"/*
  echo "round $round"
  echo "quickstart none   $(t $W run configs/quickstart.toml -o "$tmp/qa.h5" -q)"
  echo "quickstart cold   $(JAX_COMPILATION_CACHE_DIR=$tmp/A t $W run configs/quickstart.toml -o "$tmp/qb.h5" -q)"
  echo "quickstart warm   $(JAX_COMPILATION_CACHE_DIR=$tmp/A t $W run configs/quickstart.toml -o "$tmp/qc.h5" -q)"
  export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
  echo "quickstart cold0  $(JAX_COMPILATION_CACHE_DIR=$tmp/B t $W run configs/quickstart.toml -o "$tmp/qd.h5" -q)"
  echo "quickstart warm0  $(JAX_COMPILATION_CACHE_DIR=$tmp/B t $W run configs/quickstart.toml -o "$tmp/qe.h5" -q)"
  unset JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS
  study=benchmarks/study_linear_four_L.toml
  echo "lin study none  $(t $W study limit $study -o "$tmp/la.h5" -q --no-plot)"
  echo "lin study cold  $(JAX_COMPILATION_CACHE_DIR=$tmp/A t $W study limit $study -o "$tmp/lb.h5" -q --no-plot)"
  echo "lin study warm  $(JAX_COMPILATION_CACHE_DIR=$tmp/A t $W study limit $study -o "$tmp/lc.h5" -q --no-plot)"
  echo "cache sizes $(du -sh "$tmp/A" | cut -f1) $(ls "$tmp/A" | wc -l) files; $(du -sh "$tmp/B" | cut -f1) $(ls "$tmp/B" | wc -l) files"
  ${PYTHON:-.venv/bin/python} - "$tmp" <<'PY'
import sys, h5py, numpy as np
def datasets(path):
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out
a = datasets(f"{sys.argv[1]}/la.h5")
for name in ("lb", "lc"):
    b = datasets(f"{sys.argv[1]}/{name}.h5")
    same = all(np.array_equal(a[n], b[n], equal_nan=np.asarray(a[n]).dtype.kind == "f") for n in a)
    print(f"study file {name} == la: {same} ({len(a)} datasets)")
PY
done
