#!/usr/bin/env bash
# Check that GCC vectorises every loop of the generated kernels (src/md_kernels.c) at the
# x86-64 levels the core's hot code is built for (md_internal.h's MD_HOT: x86-64-v4, v3).
# Each of those loops runs across the columns of a tile; one that the compiler leaves
# scalar gives the same bits several times slower, which no test sees (md_kpass_mad_4
# and _5 were scalar until the test of whether a run moved took a form GCC 12
# vectorises).  The flags are CMakeLists.txt's.
#
#   tools/check_vectorised.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cc=${CC:-gcc}
if [ "$(uname -m)" != x86_64 ] || ! "$cc" --version 2>/dev/null | head -1 | grep -q gcc; then
    echo "check_vectorised.sh: needs GCC on x86-64; skipped"
    exit 0
fi

status=0
for level in x86-64-v4 x86-64-v3; do
    missed=$("$cc" -O3 -std=gnu99 -ffp-contract=off -fno-trapping-math -fno-math-errno \
        -march="$level" -DMD_NO_CLONES -Isrc -c src/md_kernels.c -o /dev/null \
        -fopt-info-vec-missed 2>&1 | grep "couldn't vectorize loop" || true)
    if [ -n "$missed" ]; then
        echo "check_vectorised.sh: loops of src/md_kernels.c left scalar at $level:"
        echo "$missed"
        status=1
    fi
done
if [ "$status" -eq 0 ]; then
    echo "check_vectorised.sh: every loop of src/md_kernels.c is vectorised (x86-64-v4, v3)"
fi
exit "$status"
