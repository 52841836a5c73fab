"""The comparison's error rates on simulated studies with known truth, and its run time at the study's size.

Part 1, calibration: for each arm of ``cocoseg.simulate.ARMS`` (seed spread dominating with 2 and 3
seeds, seed and image spread comparable with 3, 5 and 10 seeds), ``--studies`` simulated studies with no
true difference and ``--effect-studies`` with the arm's large effect run through the project's
comparison (``cocoseg.compare``). Side by side on the same simulated studies, the baseline is the
method this project used before: a two-level percentile bootstrap (test images, then seeds paired by
position) with a bootstrap p-value. Printed: how often each calls a difference significant when
there is none (nominal 0.05), how often its 95% intervals miss the truth, and how often it finds the
large effect.

Part 2, speed: the comparison of ``--configurations`` configurations x ``--seeds`` seeds on
``--images`` test images (the study: 12 x 5 x 800), timed against the baseline bootstrap with
``--resamples`` resamples, in the same process.

    python benchmarks/bench_comparison.py                    # the full version (a few minutes)
    python benchmarks/bench_comparison.py --studies 200      # quicker
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from cocoseg.compare import compare_confusions
from cocoseg.provenance import device_description
from cocoseg.simulate import ARMS, StudyModel, calibrate, simulate_study, true_miou
from cocoseg.stats import iou_per_class, nanmean


def bootstrap_miou(confusions: np.ndarray, image_counts: np.ndarray, seed_uniform: np.ndarray) -> np.ndarray:
    """The former method's replicates of a configuration's mIoU: images resampled, then seeds by position."""
    seeds = len(confusions)
    resampled = np.einsum("bn,snij->bsij", image_counts, confusions.astype(np.float64))
    per_seed = nanmean(iou_per_class(resampled))  # B x S
    drawn = np.floor(seed_uniform[:, :seeds] * seeds).astype(int)
    return np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1)


def bootstrap_comparison(reference: np.ndarray, other: np.ndarray, rng: np.random.Generator,
                         resamples: int) -> dict[str, float]:
    images = reference.shape[1]
    counts = rng.multinomial(images, np.full(images, 1 / images), size=resamples)
    uniform = rng.random((resamples, max(len(reference), len(other))))
    ref, oth = bootstrap_miou(reference, counts, uniform), bootstrap_miou(other, counts, uniform)
    delta = oth - ref
    p = min(1.0, 2 * min((delta <= 0).sum() + 1, (delta >= 0).sum() + 1) / (resamples + 1))
    point = lambda c: float(nanmean(iou_per_class(c.sum(axis=1))).mean())  # noqa: E731
    low, high = np.percentile(ref, [2.5, 97.5])
    delta_low, delta_high = np.percentile(delta, [2.5, 97.5])
    return {"delta": point(other) - point(reference), "delta_low": delta_low, "delta_high": delta_high, "p": p,
            "low": low, "high": high}


def baseline_rates(arm, studies: int, effect_studies: int, resamples: int, seed: int) -> dict[str, float]:
    """The former method's rates, on studies drawn from the same generator as ``calibrate`` draws them."""
    rng, draws = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    truth = true_miou(arm.model)
    null = [bootstrap_comparison(*simulate_study(arm.model, arm.seeds, rng), draws, resamples) for _ in range(studies)]
    shifted = StudyModel(**{**arm.model.__dict__, "effect": arm.large_effect})
    true_effect = true_miou(arm.model, arm.large_effect) - truth
    found = [bootstrap_comparison(*simulate_study(shifted, arm.seeds, rng), draws, resamples)
             for _ in range(effect_studies)]
    null, found = pd.DataFrame(null), pd.DataFrame(found)
    return {"false_positive": float((null["p"] < 0.05).mean()),
            "difference_missed": float(((null["delta_low"] > 0) | (null["delta_high"] < 0)).mean()),
            "interval_missed": float(((null["low"] > truth) | (null["high"] < truth)).mean()),
            "power": float(((found["p"] < 0.05) & (found["delta"] > 0)).mean()),
            "effect_missed": float(((found["delta_low"] > true_effect) | (found["delta_high"] < true_effect)).mean())}


def time_study_size(configurations: int, seeds: int, images: int, resamples: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    model = StudyModel(seed_sd=0.05, image_sd=0.3, interaction_sd=0.15, configuration_image_sd=0.2, images=images)
    confusions = {}
    for c in range(configurations // 2):
        reference, other = simulate_study(model, seeds, rng)
        confusions[f"config{2 * c}"], confusions[f"config{2 * c + 1}"] = reference, other
    runs = pd.DataFrame([{"variant": v, "seed": s, "val_miou": 0.5, "steps": 1, "images": 1, "train_minutes": 0.0}
                         for v in confusions for s in range(seeds)])
    started = time.perf_counter()
    compare_confusions(runs, confusions, ["a", "b", "c"], "config0")
    ours = time.perf_counter() - started
    started = time.perf_counter()
    draws = np.random.default_rng(1)
    for stack in confusions.values():
        bootstrap_comparison(confusions["config0"], stack, draws, resamples)
    baseline = time.perf_counter() - started
    return {"configurations": configurations, "seeds": seeds, "images": images, "comparison_s": ours,
            "bootstrap_s": baseline, "bootstrap_resamples": resamples, "ratio": baseline / ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=2000, help="studies without a difference, per arm")
    parser.add_argument("--effect-studies", type=int, default=500, help="studies with the large effect, per arm")
    parser.add_argument("--resamples", type=int, default=1000, help="of the baseline bootstrap")
    parser.add_argument("--configurations", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--arms", type=int, nargs="+", default=list(range(len(ARMS))), help="indices into ARMS")
    parser.add_argument("--json")
    args = parser.parse_args()
    cpu = device_description()["cpu"]
    print(f"CPU: {cpu}")
    rows = []
    for arm in [ARMS[i] for i in args.arms]:
        ours = calibrate(arm, args.studies, args.effect_studies)
        baseline = baseline_rates(arm, args.studies, args.effect_studies, args.resamples, seed=0)
        rows.append({"arm": arm.name, "seeds": arm.seeds, "method": "variance components (cocoseg)",
                     **dict(ours.__dict__.items())})
        rows.append({"arm": arm.name, "seeds": arm.seeds, "method": "two-level bootstrap (before)",
                     "studies": args.studies, **baseline})
        print(f"{arm.name}, {arm.seeds} seeds: done", flush=True)
    speed = time_study_size(args.configurations, args.seeds, args.images, args.resamples)
    print(f"\n{speed['configurations']} configurations x {speed['seeds']} seeds, {speed['images']} test images: "
          f"comparison {speed['comparison_s']:.2f} s; the former bootstrap ({speed['bootstrap_resamples']} resamples)"
          f" {speed['bootstrap_s']:.2f} s: {speed['ratio']:.1f}x")
    table = pd.DataFrame(rows)
    print("\n" + table[["arm", "seeds", "method", "studies", "false_positive", "difference_missed",
                        "interval_missed", "class_false_positive", "power", "effect_missed"]]
          .to_markdown(index=False, floatfmt=".3f"))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu": cpu, "calibration": rows, "speed": speed,
                       "mc_se_at_0.05": float(np.sqrt(0.0475 / args.studies))}, handle, indent=2)


if __name__ == "__main__":
    main()
