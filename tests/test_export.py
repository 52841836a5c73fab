"""Export to ONNX, its verification on the test split, the runtimes' table, and prediction with the exported model.

The models are untrained (random weights at 48 px): what is checked is that every path computes the
same function, which random weights show as well as trained ones, in seconds.
"""

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import CLASSES, THREADS
from PIL import Image

from cocoseg.checkpoint import load_checkpoint, save_checkpoint
from cocoseg.cli import _export_settings, build_parser
from cocoseg.datasets import IMAGENET_MEAN, IMAGENET_STD, read_mask
from cocoseg.deployment import (
    VerificationFailed,
    chosen_checkpoint,
    count_flops,
    deployment_table,
    export_verified,
    split_loader,
    verify,
    write_deployment,
)
from cocoseg.evaluate import evaluate
from cocoseg.export import OPSET, export, fp32_model, rank_runs
from cocoseg.models import build_model
from cocoseg.predict import predict
from cocoseg.runtimes import NotOnnx, OnnxRuntimeModel, OpenVinoModel, load_openvino
from cocoseg.settings import TrainSettings
from cocoseg.variants import grid_seeds

SIZE = 48
VARIANT = "mobilenet_v3_large-cross_entropy-uniform"


def make_checkpoint(path, seed=0, backbone="mobilenet_v3_large"):
    """An untrained model saved as training saves best.pt, its batch-norm statistics measured on noise: with
    the initial ones its logits are about 1e-9 and it predicts one class everywhere; with these, logits of
    about 10 and several classes an image, so that paths that disagreed would show it."""
    torch.manual_seed(seed)
    settings = TrainSettings(backbone=backbone, loss="cross_entropy", sampling="uniform", image_size=SIZE, seed=seed,
                             weights_backbone="none")
    model = build_model(backbone, len(CLASSES) + 1, settings.weights_backbone)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(torch.randn(8, 3, SIZE, SIZE))
    save_checkpoint(path, model=model.state_dict(), epoch=1, val_miou=0.25, settings=dataclasses.asdict(settings),
                    classes=CLASSES, variant=f"{backbone}-cross_entropy-uniform")
    return path


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    checkpoint = make_checkpoint(folder / "run" / "best.pt")
    meta = export_verified(checkpoint, folder / "deploy" / "model.onnx", "tiny", run_dir / "data" / "manifest.csv",
                           run_dir, batch_size=4, threads=THREADS)
    return folder, checkpoint, meta


def test_export_writes_opset_17_with_dynamic_axes_and_a_sidecar(exported):
    folder, checkpoint, meta = exported
    model = onnx.load(str(folder / "deploy" / "model.onnx"))
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [("", OPSET)]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    sidecar = json.loads((folder / "deploy" / "model.json").read_text())
    assert sidecar == meta
    assert sidecar["classes"] == ["background", *CLASSES] and len(sidecar["palette"]) == len(CLASSES) + 1
    assert sidecar["input"]["size"] == [SIZE, SIZE]
    assert sidecar["input"]["normalisation"]["mean"] == list(IMAGENET_MEAN)
    assert sidecar["input"]["normalisation"]["std"] == list(IMAGENET_STD)
    provenance = sidecar["provenance"]
    assert (provenance["run"], provenance["variant"], provenance["seed"]) == ("tiny", VARIANT, 0)
    assert provenance["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_onnx_runtime_matches_pytorch_at_other_batch_and_image_sizes(exported):
    folder, checkpoint, _ = exported
    model, _ = fp32_model(checkpoint)
    session = ort.InferenceSession(str(folder / "deploy" / "model.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, 40, 72, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)["out"].numpy()
    logits = session.run(None, {"image": images.numpy()})[0]
    assert logits.shape == (3, len(CLASSES) + 1, 40, 72)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_verification_bounds_logits_and_miou_against_pytorch(exported, run_dir, tmp_path):
    _, checkpoint, meta = exported
    check = meta["verification"]
    assert check["runtime"] == "onnxruntime" and check["test_images"] > 0
    assert check["logit_limit"] == 1e-3 * max(1.0, check["max_abs_logit"])
    assert check["max_logit_difference"] < 1e-4  # what fp32 against fp32 gives, well inside the bound
    # PyTorch's side, by the project's own evaluate in fp32 (its own loader and batches): the same test mIoU
    report = evaluate(checkpoint, run_dir / "data" / "manifest.csv", run_dir, tmp_path / "eval", num_workers=0,
                      batch_size=3, precision="fp32")
    assert abs(report["test"]["miou"] - check["test_miou_pytorch_fp32"]) < 1e-9
    assert abs(report["test"]["miou"] - check["test_miou"]) <= 1e-3


def test_a_failed_verification_names_runtime_metric_and_difference_and_publishes_nothing(exported, run_dir, tmp_path):
    folder, _, _ = exported
    other, state = fp32_model(make_checkpoint(tmp_path / "other" / "best.pt", seed=5))  # other weights
    with pytest.raises(VerificationFailed, match=r"onnxruntime fp32: max logit difference from PyTorch fp32 is "
                                                 r"[0-9.e+-]+ on the \d+ test images of .*, above the tolerance 0.001 "
                                                 r"x max\(1, max \|logit\| [0-9.e+-]+\) = [0-9.e+-]+"):
        verify(folder / "deploy" / "model.onnx", other, state, run_dir / "data" / "manifest.csv", run_dir)
    # logits within a loose bound, test mIoUs apart: the mIoU check fails on its own
    with pytest.raises(VerificationFailed, match=r"onnxruntime fp32: test mIoU [0-9.]+ differs from PyTorch fp32's "
                                                 r"[0-9.]+ by [0-9.e+-]+, beyond 0.001"):
        verify(folder / "deploy" / "model.onnx", other, state, run_dir / "data" / "manifest.csv", run_dir,
               logit_tolerance=1e6)

    def failing(path, model, state):
        raise VerificationFailed("onnxruntime fp32: test mIoU differs")

    with pytest.raises(VerificationFailed):
        export(tmp_path / "other" / "best.pt", tmp_path / "deploy" / "model.onnx", "tiny", failing)
    assert not (tmp_path / "deploy").exists() or not list((tmp_path / "deploy").iterdir())


def test_the_chosen_run_is_the_best_configuration_by_mean_validation_then_its_best_seed(tmp_path):
    # a-... has the single best run (0.50) but the lower mean over seeds (0.30 against 0.375)
    runs = {("a-x-y", 0): 0.50, ("a-x-y", 1): 0.10, ("b-x-y", 0): 0.35, ("b-x-y", 1): 0.40}
    paths = []
    for (variant, seed), val in runs.items():
        path = tmp_path / variant / f"seed{seed}" / "evaluation" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"variant": variant, "seed": seed, "val": {"miou": val}, "test": {"miou": 0.0}}))
        paths.append(path)
    ranked = rank_runs(paths)
    assert list(zip(ranked["variant"], ranked["seed"])) == [("b-x-y", 1), ("b-x-y", 0), ("a-x-y", 0), ("a-x-y", 1)]
    assert chosen_checkpoint(paths) == tmp_path / "b-x-y" / "seed1" / "best.pt"


def test_flops_are_counted_as_two_per_multiply_add():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    assert count_flops(conv, 10) == 2 * 3 * 8 * 3 * 3 * 10 * 10


def test_deployment_table_times_every_runtime_and_scores_its_own_predictions(exported, run_dir, monkeypatch):
    folder, checkpoint, meta = exported
    table = deployment_table(folder / "deploy" / "model.onnx", checkpoint, run_dir / "data" / "manifest.csv", run_dir,
                             batch_size=2, seconds=0.05, threads=THREADS).set_index("runtime")
    assert {"pytorch", "pytorch (project)", "onnxruntime"} <= set(table.index)
    note = str(table.loc["openvino", "note"]) if "openvino" in table.index else "missing"
    if note in ("", "nan"):  # it ran: timed, and scored within bf16's rounding of PyTorch fp32
        assert table.loc["openvino", "images_per_s"] > 0 and abs(table.loc["openvino", "test_miou_difference"]) < 0.05
    else:
        assert re.fullmatch(r"skipped: \w+: .+", note), note
    timed = table[table["note"].fillna("") == ""]
    assert (timed["images_per_s"] > 0).all() and (timed["latency_ms"] > 0).all()
    # the parameters counted from the checkpoint's tensors, not the model (batch-norm statistics are no parameters)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    stored = sum(v.numel() for k, v in load_checkpoint(checkpoint)["model"].items() if not k.endswith(buffers))
    assert (timed["params"] == stored).all()
    assert (timed["gflops_per_image"] > 0).all() and timed["gflops_per_image"].nunique() == 1
    assert table.loc["pytorch", "test_miou"] == pytest.approx(meta["verification"]["test_miou_pytorch_fp32"], abs=1e-12)
    assert abs(table.loc["onnxruntime", "test_miou_difference"]) <= 1e-3


def test_openvino_that_cannot_load_is_skipped_with_its_reason(exported, run_dir, monkeypatch):
    folder, checkpoint, _ = exported

    def no_plugin(*args, **kwargs):
        raise RuntimeError("Device with \"CPU\" name is not registered in the OpenVINO Runtime")

    monkeypatch.setattr("cocoseg.runtimes.OpenVinoModel", no_plugin)
    table = deployment_table(folder / "deploy" / "model.onnx", checkpoint, run_dir / "data" / "manifest.csv", run_dir,
                             batch_size=2, seconds=0.02, threads=THREADS).set_index("runtime")
    assert table.loc["openvino", "note"].startswith("skipped: RuntimeError: Device with \"CPU\" name")
    assert np.isnan(table.loc["openvino", "images_per_s"])


def test_openvino_that_compiles_but_fails_to_run_is_skipped_and_a_missing_file_is_an_error(exported, run_dir,
                                                                                             tmp_path, monkeypatch):
    folder, checkpoint, _ = exported
    with pytest.raises(FileNotFoundError, match="does not exist; export one"):
        load_openvino(tmp_path / "missing.onnx", 1, torch.zeros(1, 3, SIZE, SIZE))

    def fails(self, images):
        raise RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp: bf16 is not supported")

    monkeypatch.setattr(OpenVinoModel, "forward", fails)
    table = deployment_table(folder / "deploy" / "model.onnx", checkpoint, run_dir / "data" / "manifest.csv", run_dir,
                             batch_size=2, seconds=0.02, threads=THREADS).set_index("runtime")
    assert table.loc["openvino", "note"] == ("skipped: RuntimeError: Exception from src/inference/src/cpp/"
                                             "infer_request.cpp: bf16 is not supported")
    assert (table.drop(index="openvino")["images_per_s"] > 0).all()


def test_openvino_runs_fp32_on_a_cpu_without_native_bf16(exported, monkeypatch):
    folder, checkpoint, _ = exported
    monkeypatch.setattr("cocoseg.device.cpu_has_native_bf16", lambda: False)
    model = OpenVinoModel(folder / "deploy" / "model.onnx", threads=THREADS)
    assert model.precision == "fp32"
    import openvino as ov

    assert model.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    reference, _ = fp32_model(checkpoint)
    with torch.no_grad():
        expected = reference(images)["out"]
    np.testing.assert_allclose(model(images)["out"].numpy(), expected.numpy(), atol=1e-3 * float(expected.abs().max()))


def test_the_logit_bound_is_relative_to_the_logits_scale(exported, run_dir, monkeypatch):
    folder, checkpoint, meta = exported
    fp32, state = fp32_model(checkpoint)
    gain = 10.0  # both sides' logits ten times larger: the same argmax, and a scale where the bounds differ
    scale = gain * meta["verification"]["max_abs_logit"]
    assert scale > 3

    class Scaled(torch.nn.Module):
        def forward(self, images):
            return {"out": gain * fp32(images)["out"]}

    def shifted(offset):
        class Shifted(OnnxRuntimeModel):  # every logit moved alike: the same argmax, so the same mIoU
            def forward(self, images):
                return {"out": gain * super().forward(images)["out"] + offset}
        return Shifted

    model = Scaled()

    manifest = run_dir / "data" / "manifest.csv"
    monkeypatch.setattr("cocoseg.deployment.OnnxRuntimeModel", shifted(3e-3))  # above 1e-3, within 1e-3 x scale
    result = verify(folder / "deploy" / "model.onnx", model, state, manifest, run_dir, batch_size=4)
    assert result["max_logit_difference"] == pytest.approx(3e-3, rel=0.1) and result["miou_difference"] == 0
    monkeypatch.setattr("cocoseg.deployment.OnnxRuntimeModel", shifted(2e-3 * scale))
    with pytest.raises(VerificationFailed, match="onnxruntime fp32: max logit difference from PyTorch fp32 is"):
        verify(folder / "deploy" / "model.onnx", model, state, manifest, run_dir, batch_size=4)


def test_export_publishes_the_model_before_its_sidecar(tmp_path, monkeypatch):
    checkpoint = make_checkpoint(tmp_path / "run" / "best.pt")
    onnx_path = tmp_path / "deploy" / "model.onnx"

    def crash(text, path):
        assert onnx_path.is_file(), "the sidecar is written before its model is published"
        raise KeyboardInterrupt  # the process dies between the two

    monkeypatch.setattr("cocoseg.export.write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        export(checkpoint, onnx_path, "tiny")
    assert onnx_path.is_file() and not onnx_path.with_suffix(".json").exists()


def test_export_command_takes_the_named_variant_and_seed_and_refuses_a_seed_alone():
    parser = build_parser()
    args = parser.parse_args(["export", "--configfile", "config/demo.yaml", "--variant", VARIANT, "--seed", "7"])
    config, run, checkpoint = _export_settings(args)
    assert checkpoint == Path("results/demo/models") / VARIANT / "seed7" / "best.pt" == Path(run.best(VARIANT, 7))
    assert grid_seeds(config)[0] != 7
    args = parser.parse_args(["export", "--configfile", "config/demo.yaml", "--seed", "7"])
    with pytest.raises(ValueError, match="--seed 7 names a seed of --variant, which is missing; add --variant"):
        _export_settings(args)


def test_predict_with_the_onnx_model_writes_the_masks_of_the_pytorch_path(exported, run_dir, tmp_path):
    folder, checkpoint, _ = exported
    manifest = pd.read_csv(run_dir / "data" / "manifest.csv")
    images = list(manifest.loc[manifest["split"] == "test", "image_path"][:4])
    torch_masks = predict(checkpoint, images, tmp_path / "torch", precision="fp32", threads=THREADS)
    onnx_masks = predict(None, images, tmp_path / "onnx", threads=THREADS, model=folder / "deploy" / "model.onnx")
    assert [p.name for p in torch_masks] == [p.name for p in onnx_masks]
    assert len(np.unique(np.concatenate([read_mask(a).ravel() for a in torch_masks]))) >= 3  # not a uniform mask
    equal = sum(int((read_mask(a) == read_mask(b)).sum()) for a, b in zip(torch_masks, onnx_masks))
    total = sum(read_mask(a).size for a in torch_masks)
    assert equal / total >= 0.999
    for mask in onnx_masks:
        with Image.open(mask) as written, Image.open(tmp_path / "torch" / f"{mask.stem}_overlay.jpg") as overlay:
            assert written.mode == "P"
            assert Image.open(mask.with_name(f"{mask.stem}_overlay.jpg")).size == overlay.size == written.size


def test_bad_inputs_name_the_file_and_the_fix(exported, tmp_path, synthetic):
    folder, checkpoint, _ = exported
    image = next(synthetic.images_dir.iterdir())
    with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path / 'none.pt'} does not exist; train the run"):
        predict(tmp_path / "none.pt", [image], tmp_path / "out")
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(checkpoint.read_bytes()[:4096])
    with pytest.raises(NotOnnx, match=f"{not_onnx} is not an ONNX model .*; pass the model.onnx that"):
        OnnxRuntimeModel(not_onnx)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(NotOnnx, match=re.escape(f"{empty} is not an ONNX model (it has no graph: 0 bytes); pass the")):
        OnnxRuntimeModel(empty)
    deep = tmp_path / "depth.png"
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(deep)
    with pytest.raises(ValueError, match=re.escape(str(deep)) + r" is a '(I;16|I)' image, not an 8-bit photo; "
                                         r"convert it to 8-bit RGB JPEG or PNG"):
        predict(None, [deep], tmp_path / "out", model=folder / "deploy" / "model.onnx")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=f"{text} is not an image Pillow can read .*; pass JPEG or PNG files"):
        predict(None, [text], tmp_path / "out", model=folder / "deploy" / "model.onnx")
    other = make_checkpoint(tmp_path / "other.pt", seed=3)
    with pytest.raises(ValueError, match=f"{other} is not the checkpoint .* was exported from .*; export it again"):
        write_deployment(folder / "deploy" / "model.onnx", other, tmp_path / "manifest.csv", tmp_path,
                         tmp_path / "d.csv", tmp_path / "d.html")
    result = subprocess.run([sys.executable, "-m", "cocoseg", "predict", "--model", str(not_onnx), "--out-dir",
                             str(tmp_path / "out"), str(image)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and f"error: {not_onnx} is not an ONNX model" in result.stderr


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_evaluate_on_another_engine_matches_the_pytorch_reference(exported, run_dir, tmp_path, engine, monkeypatch):
    _, checkpoint, _ = exported
    manifest = run_dir / "data" / "manifest.csv"
    runtime = OnnxRuntimeModel if engine == "onnxruntime" else OpenVinoModel
    forward, contiguous = runtime.forward, []

    def recording(self, images):
        contiguous.append(images.is_contiguous())
        return forward(self, images)

    monkeypatch.setattr(runtime, "forward", recording)
    reference = evaluate(checkpoint, manifest, run_dir, tmp_path / "pytorch", num_workers=0, batch_size=4,
                         precision="fp32")
    report = evaluate(checkpoint, manifest, run_dir, tmp_path / engine, num_workers=0, batch_size=4, threads=THREADS,
                      engine=engine)
    assert (report["engine"], report["device"], reference["engine"]) == (engine, "cpu", "pytorch")
    assert report["engine_fallback"] is None and len(contiguous) > 2 and all(contiguous)  # NCHW, never channels_last
    # fp32 against fp32 is bounded as the export's verification bounds it; OpenVINO's bf16 rounds like PyTorch's
    bound = 1e-3 if report["precision"] == "fp32" else 0.05
    for split in ("val", "test"):
        assert abs(report[split]["miou"] - reference[split]["miou"]) <= bound
    predictions = sorted((tmp_path / "pytorch" / "predictions").iterdir())
    equal = sum(int((read_mask(p) == read_mask(tmp_path / engine / "predictions" / p.name)).sum()) for p in predictions)
    share = equal / sum(read_mask(p).size for p in predictions)
    assert share >= (0.999 if bound == 1e-3 else 0.95)


def test_an_engine_whose_logits_differ_from_pytorch_stops_evaluation(exported, run_dir, tmp_path, monkeypatch):
    _, checkpoint, _ = exported
    forward = OnnxRuntimeModel.forward
    monkeypatch.setattr(OnnxRuntimeModel, "forward", lambda self, images: {"out": forward(self, images)["out"] * 1.5})
    with pytest.raises(VerificationFailed, match=r"evaluate.engine onnxruntime \(fp32\): max logit difference "
                                                 r"from PyTorch fp32 is [0-9.e+-]+ on the first \d+ evaluation images, "
                                                 r"above the tolerance 0.001 .*; set evaluate.engine to pytorch"):
        evaluate(checkpoint, run_dir / "data" / "manifest.csv", run_dir, tmp_path / "eval", num_workers=0,
                 batch_size=4, threads=THREADS, engine="onnxruntime")
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("engine, where", [("openvino", "forward"), ("onnxruntime", "__init__")])
def test_an_engine_that_cannot_run_here_falls_back_to_pytorch(exported, run_dir, tmp_path, monkeypatch, caplog,
                                                              engine, where):
    _, checkpoint, _ = exported

    def fails(self, *args, **kwargs):
        raise RuntimeError(f"{engine} cannot run on this CPU")

    monkeypatch.setattr(OnnxRuntimeModel if engine == "onnxruntime" else OpenVinoModel, where, fails)
    report = evaluate(checkpoint, run_dir / "data" / "manifest.csv", run_dir, tmp_path / "eval", num_workers=0,
                      batch_size=4, threads=THREADS, precision="fp32", engine=engine)
    expected = {"engine": "pytorch", "engine_requested": engine,
                "engine_fallback": f"{engine}: RuntimeError: {engine} cannot run on this CPU", "precision": "fp32"}
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {key: report[key] for key in expected} == {key: written[key] for key in expected} == expected
    assert f"evaluate.engine {engine} cannot run here" in caplog.text
    split_images = len(split_loader(run_dir / "data" / "manifest.csv", run_dir, load_checkpoint(checkpoint), 4)[0])
    assert report["test"]["images"] == split_images and 0 <= report["test"]["miou"] <= 1
