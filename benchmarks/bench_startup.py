"""A job's start-up and exit: the library's imports with the collector freezing them, against without.

Every training, evaluation, export and deployment job, and every spawned rank, is a fresh Python that imports
torch and torchvision (about 2,000 modules) before it does anything. ``cocoseg.models`` calls ``gc.freeze()``
once they are imported, so later full collections and the collections at exit leave them out. Measured here:
the wall time of ``python -c "import cocoseg.train, cocoseg.evaluate"`` (what the train and evaluate rule
scripts import), which freezes, against the same imports with ``gc.freeze`` made a no-op (the baseline: the
code before), in ``--rounds`` interleaved rounds in the same run; the median of each.

    python benchmarks/bench_startup.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from cocoseg.deployment import cpu_model

IMPORTS = "import cocoseg.train, cocoseg.evaluate"
BASELINE = "import gc; gc.freeze = lambda: None; " + IMPORTS  # the same imports, nothing frozen


def wall_seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    wall_seconds(IMPORTS)  # warm the file cache and the bytecode
    frozen, baseline = [], []
    for _ in range(args.rounds):
        frozen.append(wall_seconds(IMPORTS))
        baseline.append(wall_seconds(BASELINE))
    result = {"cpu": cpu_model(), "rounds": args.rounds, "frozen_s": statistics.median(frozen),
              "baseline_s": statistics.median(baseline)}
    result["speedup"] = result["baseline_s"] / result["frozen_s"]
    print(f"{result['cpu']}: start-up and exit of a job's imports, median of {args.rounds} rounds: "
          f"{result['frozen_s']:.2f} s frozen, {result['baseline_s']:.2f} s before "
          f"({result['speedup']:.2f}x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
