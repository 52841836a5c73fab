"""Export to ONNX, its verification on the test split, the runtimes' table, and prediction with the exported model.

The models are untrained (random weights at 48 px): what is checked is that every path computes the
same function, which random weights show as well as trained ones, in seconds.
"""

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import CLASSES
from PIL import Image

from cocoseg.checkpoint import save_checkpoint
from cocoseg.datasets import IMAGENET_MEAN, IMAGENET_STD, read_mask
from cocoseg.deployment import (
    VerificationFailed,
    chosen_checkpoint,
    count_flops,
    deployment_table,
    export_verified,
    verify,
    write_deployment,
)
from cocoseg.evaluate import evaluate
from cocoseg.export import OPSET, export, fp32_model, rank_runs
from cocoseg.models import build_model
from cocoseg.predict import predict
from cocoseg.runtimes import NotOnnx, OnnxRuntimeModel
from cocoseg.settings import TrainSettings

SIZE = 48
VARIANT = "mobilenet_v3_large-cross_entropy-uniform"


def make_checkpoint(path, seed=0, backbone="mobilenet_v3_large"):
    """An untrained model saved as training saves best.pt, its batch-norm statistics measured on noise: with
    the initial ones its logits are about 1e-9 and it predicts one class everywhere; with these, logits of
    about 10 and several classes an image, so that paths that disagreed would show it."""
    torch.manual_seed(seed)
    settings = TrainSettings(backbone=backbone, loss="cross_entropy", sampling="uniform", image_size=SIZE, seed=seed)
    model = build_model(backbone, len(CLASSES) + 1)
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
                           run_dir, batch_size=4, threads=2)
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
    assert check["max_logit_difference"] <= check["logit_tolerance"] == 1e-3
    assert abs(check["miou_difference"]) <= check["miou_tolerance"] == 1e-3
    # PyTorch's side, by the project's own evaluate in fp32 (its own loader and batches): the same test mIoU
    report = evaluate(checkpoint, run_dir / "data" / "manifest.csv", run_dir, tmp_path / "eval", batch_size=3,
                      precision="fp32")
    assert abs(report["test"]["miou"] - check["test_miou_pytorch_fp32"]) < 1e-9
    assert abs(report["test"]["miou"] - check["test_miou"]) <= 1e-3


def test_a_failed_verification_names_runtime_metric_and_difference_and_publishes_nothing(exported, run_dir, tmp_path):
    folder, _, _ = exported
    other, state = fp32_model(make_checkpoint(tmp_path / "other" / "best.pt", seed=5))  # other weights
    with pytest.raises(VerificationFailed, match=r"onnxruntime fp32: max logit difference from PyTorch fp32 is "
                                                 r"[0-9.e+-]+ on the \d+ test images of .*, above the tolerance 0.001"):
        verify(folder / "deploy" / "model.onnx", other, state, run_dir / "data" / "manifest.csv", run_dir)

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
                             batch_size=2, seconds=0.05, threads=2).set_index("runtime")
    assert {"pytorch", "pytorch (project)", "onnxruntime"} <= set(table.index)
    assert "openvino" in table.index  # timed, or skipped with its reason
    timed = table[table["note"].fillna("") == ""]
    assert (timed["images_per_s"] > 0).all() and (timed["latency_ms"] > 0).all()
    model, _ = fp32_model(checkpoint)
    assert (timed["params"] == sum(p.numel() for p in model.parameters())).all()
    assert (timed["gflops_per_image"] > 0).all() and timed["gflops_per_image"].nunique() == 1
    assert table.loc["pytorch", "test_miou"] == pytest.approx(meta["verification"]["test_miou_pytorch_fp32"], abs=1e-12)
    assert abs(table.loc["onnxruntime", "test_miou_difference"]) <= 1e-3


def test_openvino_that_cannot_load_is_skipped_with_its_reason(exported, run_dir, monkeypatch):
    folder, checkpoint, _ = exported

    def no_plugin(*args, **kwargs):
        raise RuntimeError("Device with \"CPU\" name is not registered in the OpenVINO Runtime")

    monkeypatch.setattr("cocoseg.runtimes.OpenVinoModel", no_plugin)
    table = deployment_table(folder / "deploy" / "model.onnx", checkpoint, run_dir / "data" / "manifest.csv", run_dir,
                             batch_size=2, seconds=0.02, threads=2).set_index("runtime")
    assert table.loc["openvino", "note"].startswith("skipped: RuntimeError: Device with \"CPU\" name")
    assert np.isnan(table.loc["openvino", "images_per_s"])


def test_predict_with_the_onnx_model_writes_the_masks_of_the_pytorch_path(exported, run_dir, tmp_path):
    folder, checkpoint, _ = exported
    manifest = pd.read_csv(run_dir / "data" / "manifest.csv")
    images = list(manifest.loc[manifest["split"] == "test", "image_path"][:4])
    torch_masks = predict(checkpoint, images, tmp_path / "torch", precision="fp32", threads=2)
    onnx_masks = predict(None, images, tmp_path / "onnx", threads=2, model=folder / "deploy" / "model.onnx")
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
def test_evaluate_on_another_engine_matches_the_pytorch_reference(exported, run_dir, tmp_path, engine):
    _, checkpoint, _ = exported
    manifest = run_dir / "data" / "manifest.csv"
    reference = evaluate(checkpoint, manifest, run_dir, tmp_path / "pytorch", batch_size=4, precision="fp32")
    report = evaluate(checkpoint, manifest, run_dir, tmp_path / engine, batch_size=4, threads=2, engine=engine)
    assert (report["engine"], report["device"], reference["engine"]) == (engine, "cpu", "pytorch")
    # fp32 against fp32 is bounded as the export's verification bounds it; OpenVINO's bf16 rounds like PyTorch's
    bound = 1e-3 if report["precision"] in ("fp32", "f32") else 0.05
    for split in ("val", "test"):
        assert abs(report[split]["miou"] - reference[split]["miou"]) <= bound
    predictions = sorted((tmp_path / "pytorch" / "predictions").iterdir())
    equal = sum(int((read_mask(p) == read_mask(tmp_path / engine / "predictions" / p.name)).sum()) for p in predictions)
    share = equal / sum(read_mask(p).size for p in predictions)
    assert share >= (0.999 if bound == 1e-3 else 0.95)
