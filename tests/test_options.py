"""``model.aux_loss`` and ``train.compile`` end to end: train, resume, evaluate and predict with them on.

``torch.compile`` with its default backend (inductor) takes minutes for MobileNetV3 on a CPU; the
test wraps it to use the ``eager`` backend, so the compiled path (TorchDynamo's graph capture, the
compiled module's state dict, checkpoints and resume through it) runs while code generation does not.
"""

import os
import signal

import pandas as pd
import pytest
import torch
from conftest import CLASSES, THREADS

import cocoseg.train as train_module
from cocoseg.evaluate import evaluate
from cocoseg.metrics import metrics_from_confusion
from cocoseg.models import build_model
from cocoseg.predict import predict
from cocoseg.train import TrainingInterrupted, TrainSettings, load_checkpoint, train


def settings(**changes) -> TrainSettings:
    base = dict(backbone="mobilenet_v3_large", loss="cross_entropy", sampling="uniform", image_size=48, epochs=2,
                batch_size=4, lr=1e-3, rotate=0, weights_backbone="none", bn_momentum=0.1, num_workers=0,
                wandb_mode="disabled", eval_batch_size=4, precision="fp32")
    return TrainSettings(**{**base, **changes})


def run_training(run_dir, out, train_settings, **kwargs):
    return train(run_dir / "data" / "manifest.csv", run_dir, out, CLASSES, train_settings, variant="v", threads=THREADS,
                 **kwargs)


def evaluate_and_predict(run_dir, model_dir, tmp_path) -> dict:
    """Evaluate the run's best.pt on the test split and predict two test images with it."""
    metrics = evaluate(model_dir / "best.pt", run_dir / "data" / "manifest.csv", run_dir, model_dir / "evaluation",
                       num_workers=0, batch_size=4, threads=THREADS, device_name="cpu")
    manifest = pd.read_csv(run_dir / "data" / "manifest.csv")
    images = manifest.loc[manifest["split"] == "test", "image_path"].head(2).tolist()
    written = predict(model_dir / "best.pt", images, tmp_path / "predictions", device_name="cpu", threads=THREADS)
    assert [path.stem for path in written if path.suffix == ".png"] == [os.path.splitext(os.path.basename(i))[0]
                                                                         for i in images]
    assert_metrics_are_the_test_splits(run_dir, model_dir / "evaluation", metrics)
    return metrics


def assert_metrics_are_the_test_splits(run_dir, eval_dir, metrics) -> None:
    """The reported test metrics are those of the written confusion matrix, which counts every labelled
    test pixel once."""
    manifest = pd.read_csv(run_dir / "data" / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    confusion = pd.read_csv(eval_dir / "confusion.csv").set_index("truth").to_numpy()
    assert confusion.sum() == test[[f"pixels_{c}" for c in ("background", *CLASSES)]].to_numpy().sum()
    expected = metrics_from_confusion(confusion)
    assert metrics["test"]["images"] == len(test)
    assert metrics["test"]["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert metrics["test"]["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_aux_loss_trains_the_aux_head_and_evaluate_and_predict_load_it(run_dir, tmp_path):
    """With aux_weight 0 the aux head gets no gradient (Adam leaves it as initialised); with 0.4 it learns.

    Both runs start from the same weights (same seed), so equal aux heads would mean the aux loss is ignored.
    """
    run_training(run_dir, tmp_path / "aux", settings(aux_loss=True, aux_weight=0.4, epochs=1))
    run_training(run_dir, tmp_path / "silent", settings(aux_loss=True, aux_weight=0.0, epochs=1))
    state = load_checkpoint(tmp_path / "aux" / "best.pt")
    silent = load_checkpoint(tmp_path / "silent" / "best.pt")["model"]
    head = [name for name, _ in build_model("mobilenet_v3_large", len(CLASSES) + 1, "none", True).named_parameters()
            if name.startswith("aux_classifier.")]
    assert head and state["settings"]["aux_loss"] is True
    assert not torch.equal(state["model"][head[-1]], silent[head[-1]])
    evaluate_and_predict(run_dir, tmp_path / "aux", tmp_path)  # asserts the metrics against the confusion matrix


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with the eager backend; records what it compiled."""
    compiled, real = [], torch.compile

    def compile_eagerly(model, *args, **kwargs):
        compiled.append(model)
        return real(model, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    yield compiled
    torch._dynamo.reset()


@pytest.mark.slow
def test_compile_trains_resumes_after_sigterm_and_evaluates(run_dir, tmp_path, eager_compile, monkeypatch):
    run_training(run_dir, tmp_path / "plain", settings())
    end_epoch = train_module.end_epoch

    def end_epoch_then_sigterm(training, state, *args):
        end_epoch(training, state, *args)
        if state.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # pre-empted as epoch 1 ends

    monkeypatch.setattr(train_module, "end_epoch", end_epoch_then_sigterm)
    with pytest.raises(TrainingInterrupted):
        run_training(run_dir, tmp_path / "compiled", settings(compile=True))
    monkeypatch.setattr(train_module, "end_epoch", end_epoch)
    assert len(eager_compile) == 1
    interrupted = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pt")
    assert interrupted["epoch"] == 1
    assert not any(name.startswith("_orig_mod.") for name in interrupted["model"])  # the plain module's names
    run_training(run_dir, tmp_path / "compiled", settings(compile=True))
    assert len(eager_compile) == 2
    assert pd.read_csv(tmp_path / "compiled" / "metrics.csv")["epoch"].tolist() == [1, 2]
    # The eager backend runs the captured graph with the same kernels: the compiled, pre-empted and
    # resumed run ends where the plain uninterrupted one does.
    plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pt")["model"]
    for name in plain:
        torch.testing.assert_close(resumed[name], plain[name], rtol=0, atol=0, msg=name)
    evaluate_and_predict(run_dir, tmp_path / "compiled", tmp_path)  # asserts the metrics against the confusion
