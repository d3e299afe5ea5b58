#!/usr/bin/env bash
# Build the C core with AddressSanitizer and UndefinedBehaviorSanitizer (CMake option
# MEGARA_DARK_SANITIZE) in a virtual environment of its own, and run the core's tests
# (tests/test_combine.py, tests/test_numina_compat.py) under it.  Any sanitizer report
# stops the run with a non-zero exit.
#
#   tools/sanitize.sh [pytest arguments...]
#
# SANITIZE_DIR (default build/sanitize) holds the venv and the CMake build; a second run
# reuses both.  Python itself is not instrumented: libasan is preloaded so that it is
# the first library loaded, and leak detection is off (CPython does not free everything
# at exit).  The memory-growth test is left out: ASan's quarantine keeps freed memory
# on purpose.  NumPy's data buffers and the core's scratch come from malloc, so ASan sees
# every byte the core reads or writes.
set -euo pipefail
cd "$(dirname "$0")/.."

work=${SANITIZE_DIR:-build/sanitize}
mkdir -p "$work"
work=$(cd "$work" && pwd)
if [ ! -x "$work/venv/bin/python" ]; then
    python3 -m venv "$work/venv"
fi
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python -m pip install --quiet numpy astropy pyyaml rich matplotlib cython cython-cmake \
    scikit-build-core pytest hypothesis jsonschema "numina==0.40.0"

start=$SECONDS
SKBUILD_BUILD_DIR="$work/build" python -m pip install --quiet --no-build-isolation --no-deps \
    --force-reinstall -Ccmake.define.MEGARA_DARK_SANITIZE=ON -Ccmake.build-type=RelWithDebInfo .
echo "sanitize.sh: built in $((SECONDS - start)) s"

libasan=$(${CC:-cc} -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
    echo "sanitize.sh: libasan.so not found (is the compiler gcc or clang with ASan?)" >&2
    exit 2
fi

start=$SECONDS
LD_PRELOAD="$libasan" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    pytest -p no:cacheprovider tests/test_combine.py tests/test_numina_compat.py \
    --deselect tests/test_combine.py::test_no_memory_growth_over_repeated_calls "$@"
echo "sanitize.sh: tests ran in $((SECONDS - start)) s"
