"""A long fuzz run of the recipe's inputs (not part of the default test run).

The same strategies and property as tests/test_faults_fuzz.py (tests/fitsfuzz.py):
damaged real FITS files, used as a frame or as the master bias, must either reduce or
raise a MegaraDarkError naming the file; inputs stay byte-identical, no temp file is
left, no example hangs.  Prints how many examples ended each way.

    python tools/fuzz_inputs.py [--examples 5000] [--seed 0]

Run it from the repository with the package installed (``pip install '.[test]'``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fitsfuzz import check, corrupted_files, good_set


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="examples to draw")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    args = parser.parse_args()
    outcomes: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as folder:
        good = good_set(Path(folder) / "good")

        @seed(args.seed)
        @settings(
            max_examples=args.examples,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def fuzz(data):
            role, suffix, damaged = data.draw(corrupted_files(good), label="damaged file")
            with tempfile.TemporaryDirectory(dir=folder) as work:
                outcomes[check(role, suffix, damaged, good, Path(work))] += 1

        fuzz()
    total = sum(outcomes.values())
    print(f"{total} examples: " + ", ".join(f"{n} {k}" for k, n in outcomes.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
