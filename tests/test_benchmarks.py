"""The benchmarks run end to end on the CPU (tiny sizes: a smoke test, not a measurement)."""

import json
import runpy
import signal
import sys

import cv2
import pytest
import torch
from conftest import REPO, THREADS

from cocoseg.device import cpu_has_native_bf16


@pytest.fixture
def run_benchmark(tmp_path, monkeypatch):
    """``python benchmarks/<script> <args>`` run in this process, in tmp_path (a new process would spend seconds
    importing torch again). What the scripts change for the whole process is put back afterwards: torch's and
    OpenCV's thread counts (``--threads``) and torch's CPU random state (``torch.manual_seed``)."""
    threads, opencv_threads, random_state = torch.get_num_threads(), cv2.getNumThreads(), torch.get_rng_state()
    monkeypatch.chdir(tmp_path)

    def run(script, *args, timeout=600):
        path = REPO / "benchmarks" / script
        monkeypatch.setattr(sys, "argv", [str(path), *args])
        previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail(f"{script} ran past {timeout} s"))
        signal.alarm(timeout)  # a hang fails the test instead of holding up the suite
        try:
            runpy.run_path(str(path), run_name="__main__")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    yield run
    torch.set_num_threads(threads)
    cv2.setNumThreads(opencv_threads)
    torch.set_rng_state(random_state)


def test_bench_train_smoke(tmp_path, run_benchmark):
    out = tmp_path / "bench.json"
    run_benchmark("bench_train.py", "--device", "cpu", "--size", "32", "--images", "20", "--steps", "1",
                  "--warmup", "0", "--batch-size", "4", "--eval-batch-size", "8", "--study-divisor", "1",
                  "--study-workers", "0", "--num-workers", "0", "--threads", str(THREADS), "--json", str(out))
    result = json.loads(out.read_text())
    assert result["device"].startswith("CPU") and result["size"] == 32
    assert set(result["backbones"]) == {"mobilenet_v3_large", "resnet50"}
    assert result["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")  # --precision auto
    for paths in result["backbones"].values():
        assert paths["cocoseg"]["data_path"] == "LoaderBatches"  # no CUDA: albumentations in the loader
        assert (paths["cocoseg"]["precision"], paths["cocoseg"]["memory_format"]) == (result["precision"],
                                                                                       "channels_last")
        assert (paths["study"]["precision"], paths["study"]["memory_format"]) == ("fp32", "contiguous")
        assert paths["cocoseg"]["eval_engine"] == f"pytorch {result['precision']}"  # evaluate.engine's default
        for name in ("cocoseg", "study"):
            assert paths[name]["eval"]["images"] == result["images"]
            for phase in ("train", "eval"):
                timed = paths[name][phase]
                assert timed["seconds"] > 0
                assert timed["images_per_s"] == pytest.approx(timed["images"] / timed["seconds"], rel=1e-9)
        # Images counted batch by batch in the timed loops: what was asked, 1 step of 4 on each path
        # (the study loop: steps x batch size / its batch 4 / divisor 1 steps).
        assert paths["cocoseg"]["train"]["images"] == paths["study"]["train"]["images"] == 4
        for ratio, phase in (("train_ratio", "train"), ("eval_ratio", "eval")):
            assert paths[ratio] == pytest.approx(paths["cocoseg"][phase]["images_per_s"]
                                                 / paths["study"][phase]["images_per_s"], rel=1e-9)
        # The grid's hours from the measured rates, at the script's defaults: 6 variants x 30 epochs of
        # 6,400 training and 800 validation images.
        for name in ("cocoseg", "study"):
            epoch = 6400 / paths[name]["train"]["images_per_s"] + 800 / paths[name]["eval"]["images_per_s"]
            assert paths["grid_hours"][name] == pytest.approx(6 * 30 * epoch / 3600, rel=1e-9)
    assert result["grid_hours"]["cocoseg"] == sum(b["grid_hours"]["cocoseg"] for b in result["backbones"].values())


def test_bench_comparison_reproduces_the_calibration_and_the_former_methods_failure(tmp_path, run_benchmark):
    from cocoseg.simulate import ARMS, calibrate

    out = tmp_path / "comparison.json"
    run_benchmark("bench_comparison.py", "--arms", "0", "--studies", "40",
                  "--effect-studies", "10", "--resamples", "200", "--configurations", "4", "--seeds", "2",
                  "--images", "50", "--json", str(out))
    result = json.loads(out.read_text())
    ours, before = result["calibration"]
    assert ours == {"arm": ARMS[0].name, "seeds": 2, "method": "variance components (cocoseg)",
                    **calibrate(ARMS[0], 40, 10).__dict__}
    # With 2 seeds whose spread dominates, the former bootstrap calls a non-difference significant far too often.
    assert before["false_positive"] >= 0.15 > ours["false_positive"]
    assert result["speed"]["configurations"] == 4 and result["speed"]["images"] == 50


def test_bench_deploy_smoke(tmp_path, run_benchmark):
    out = tmp_path / "deploy.json"
    run_benchmark("bench_deploy.py", "--size", "32", "--batch-size", "2", "--seconds", "0.05",
                  "--threads", str(THREADS), "--json", str(out), timeout=300)
    result = json.loads(out.read_text())
    rows = {(row["backbone"], row["runtime"]): row for row in result["rows"]}
    for backbone in ("mobilenet_v3_large", "resnet50"):
        assert {"pytorch", "pytorch (project)", "onnxruntime", "openvino"} <= {b for a, b in rows if a == backbone}
        assert rows[backbone, "pytorch"]["speedup"] == 1 and rows[backbone, "pytorch"]["max_logit_difference"] == 0
        assert rows[backbone, "onnxruntime"]["max_logit_difference"] < 1e-3  # fp32 against fp32
        onnxruntime = rows[backbone, "onnxruntime"]  # its throughput over PyTorch fp32's, side by side
        assert onnxruntime["speedup"] == pytest.approx(
            onnxruntime["images_per_s"] / rows[backbone, "pytorch"]["images_per_s"], rel=1e-9)
