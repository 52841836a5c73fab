"""Bootstrap speed at the study's size: the vectorised path against a per-replicate loop, in one run.

The study: 12 configurations x 3 seeds, 800 test images, 6 classes, 2,000 resamples. The
project's path (``cocoseg.stats.bootstrap``) makes each configuration's replicates with one
matrix product; the baseline resums the drawn images' confusion matrices replicate by replicate
and computes the metrics with ``cocoseg.metrics.metrics_from_confusion``, on the same draws;
the largest difference between the two is printed.

    python benchmarks/bench_bootstrap.py
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from cocoseg.metrics import metrics_from_confusion
from cocoseg.stats import bootstrap, draw_image_counts, seed_counts


def synthetic_confusions(configurations: int, seeds: int, images: int, classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    result = {}
    for c in range(configurations):
        confusion = rng.poisson(20, size=(seeds, images, classes, classes))
        confusion[..., np.arange(classes), np.arange(classes)] += rng.poisson(2000, size=(seeds, images, classes))
        result[f"config{c}"] = confusion
    return result


def loop_bootstrap(confusions: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """The same replicates' mIoU, one replicate and seed at a time."""
    images = next(iter(confusions.values())).shape[1]
    rng = np.random.default_rng(seed)
    counts = draw_image_counts(rng, resamples, images)
    uniform = rng.random((resamples, max(c.shape[0] for c in confusions.values())))
    result = {}
    for name, confusion in confusions.items():
        seed_draws = seed_counts(uniform, confusion.shape[0])
        values = np.empty(resamples)
        for b in range(resamples):
            per_seed = [metrics_from_confusion(np.tensordot(counts[b], confusion[s], axes=1))["miou"]
                        for s in range(confusion.shape[0])]
            values[b] = np.dot(seed_draws[b], per_seed) / confusion.shape[0]
        result[name] = values
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configurations", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--json")
    args = parser.parse_args()
    confusions = synthetic_confusions(args.configurations, args.seeds, args.images, args.classes)

    started = time.perf_counter()
    estimates = bootstrap(confusions, args.resamples, seed=0)
    fast = time.perf_counter() - started

    started = time.perf_counter()
    looped = loop_bootstrap(confusions, args.resamples, seed=0)
    slow = time.perf_counter() - started
    worst = max(float(np.max(np.abs(estimates[k].miou_replicates - looped[k]))) for k in confusions)
    result = {"configurations": args.configurations, "seeds": args.seeds, "images": args.images,
              "classes": args.classes, "resamples": args.resamples, "vectorised_s": fast, "loop_s": slow,
              "ratio": slow / fast, "max_abs_difference": worst}
    print(f"{args.configurations} configurations x {args.seeds} seeds, {args.images} images, "
          f"{args.resamples} resamples:"
          f" vectorised {fast:.2f} s, per-replicate loop {slow:.1f} s: {slow / fast:.0f}x;"
          f" largest difference {worst:.1e}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
