"""``python -m cocoseg <step>``: every pipeline step without Snakemake."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cocoseg.logs import logged
from cocoseg.paths import RunPaths, html_of

EXAMPLE = RunPaths.of("<run>")  # the paths the help names
RUN_DIR_HELP = "the run folder the manifest's mask paths are relative to (default: the run of --manifest)"


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def _fraction(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    return name, float(value)


def _config_default(key: str, text: str = "", shown: Callable[[Any], str] = str) -> dict[str, Any]:
    """``default`` and ``help`` of an option that stands for config ``key``: the schema's default, as the
    workflow uses it, named in --help."""
    from cocoseg.config import schema_default

    default = schema_default(key)
    note = f"default: {shown(default)}, as the config's {key}"
    return {"default": default, "help": f"{text} ({note})" if text else note}


def _folder(text: str) -> RunPaths:
    """A folder given on the command line, laid out like a run's."""
    return RunPaths(Path(text).as_posix())


def _run(args: argparse.Namespace, config: dict | None = None) -> RunPaths:
    """The run folder that the manifest's mask paths are relative to: --run-dir, else the run whose
    data/manifest.csv --manifest names, else the config's run."""
    if args.run_dir:
        return _folder(args.run_dir)
    if args.manifest or config is None:
        return RunPaths.of_manifest(args.manifest)
    return RunPaths.of(config["run"])


def cmd_validate(args: argparse.Namespace) -> None:
    from cocoseg.config import load_config

    load_config(args.configfile)
    print(f"{args.configfile}: valid")


def cmd_synth(args: argparse.Namespace) -> None:
    from cocoseg.data.synth import generate

    generate(args.images_zip, args.annotations_zip, args.num_images, args.seed, args.size)


def cmd_download(args: argparse.Namespace) -> None:
    from cocoseg.data.download import download

    download(args.url, args.dest, args.sha256, args.retries, timeout=args.timeout)


def cmd_extract(args: argparse.Namespace) -> None:
    from cocoseg.data.extract import extract_images, extract_member

    if args.member:
        extract_member(args.archive, args.member, args.dest)
    else:
        extract_images(args.archive, args.annotations, args.classes, args.dest, args.listing, args.threads)


def cmd_select(args: argparse.Namespace) -> None:
    from cocoseg.data.select import select_images

    select_images(args.annotations, args.images_dir, args.classes, args.out_dir, args.max_images,
                  args.seed, args.crowd, args.threads)


def cmd_masks(args: argparse.Namespace) -> None:
    from cocoseg.data.masks import build_masks

    build_masks(args.instances, args.masks_dir, args.counts, args.crowd, args.shard, args.num_shards)


def cmd_split(args: argparse.Namespace) -> None:
    from cocoseg.data.split import split_manifest

    split_manifest(args.selected, args.counts, args.classes, args.manifest, args.splits,
                   dict(args.fractions), args.seed, args.images_dir, args.mask_dirs)


def cmd_stats(args: argparse.Namespace) -> None:
    from cocoseg.data.stats import write_stats

    out = _folder(args.out_dir)
    write_stats(args.manifest, args.classes, out.class_distribution, html_of(out.class_distribution),
                out.class_images, out.class_pixels)


def cmd_cache(args: argparse.Namespace) -> None:
    from cocoseg.cache import build_cache

    build_cache(args.manifest, _run(args).root, args.out_dir, args.image_size, args.threads)


def cmd_train(args: argparse.Namespace) -> None:
    from cocoseg.config import load_config
    from cocoseg.train import train, train_distributed
    from cocoseg.variants import settings_for

    config = load_config(args.configfile)
    settings = settings_for(config, args.variant, args.seed)
    run = _run(args, config)
    out_dir = args.out_dir or run.model_dir(args.variant, settings.seed)
    cache_dir = args.cache_dir or run.cache_dir(settings.image_size)
    arguments = (args.manifest or run.manifest, run.root, out_dir, config["dataset"]["classes"], settings,
                 args.variant, config["run"], args.threads)
    if args.nproc > 1:
        train_distributed(args.nproc, *arguments, cache_dir=cache_dir, log_file=args.log)
    else:  # one process, or one rank of torchrun (which initialises the process group)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch

            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        train(*arguments, cache_dir=cache_dir)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from cocoseg.evaluate import evaluate

    evaluate(args.checkpoint, args.manifest, _run(args).root, args.out_dir, args.num_workers, args.batch_size,
             args.threads, args.device, args.precision, args.engine)


def cmd_compare(args: argparse.Namespace) -> None:
    from cocoseg.compare import compare
    from cocoseg.config import load_config
    from cocoseg.plots import forest_plot, power_curves, write_comparison
    from cocoseg.variants import expand_variants, grid_seeds

    config = load_config(args.configfile)
    run = RunPaths.of(config["run"])
    runs = [(v, s) for v in expand_variants(config) for s in grid_seeds(config)]
    evaluate, out = config["evaluate"], _folder(args.out_dir) if args.out_dir else run
    table, per_class = compare([run.evaluation_metrics(*r) for r in runs], [run.training_summary(*r) for r in runs],
                               [run.per_image_confusion(*r) for r in runs], config["dataset"]["classes"],
                               evaluate["reference"])
    write_comparison(table, per_class, evaluate["reference"], out.comparison, html_of(out.comparison),
                     out.comparison_per_class)
    forest_plot(table, per_class, evaluate["reference"], out.forest)
    power_curves(table, evaluate["reference"], out.power)


def cmd_predict(args: argparse.Namespace) -> None:
    from cocoseg.predict import predict

    predict(args.checkpoint, args.images, args.out_dir, args.device, args.precision, args.threads, args.model)


def _export_settings(args: argparse.Namespace) -> tuple[dict, RunPaths, Path]:
    """The config, the run's paths (--run-dir, --manifest's run, else the config's), and the checkpoint: named,
    or the one validation chooses among that run's."""
    from cocoseg.config import load_config
    from cocoseg.deployment import chosen_checkpoint
    from cocoseg.variants import expand_variants, grid_seeds

    config = load_config(args.configfile)
    run = _run(args, config)
    if args.seed is not None and not args.variant:
        raise ValueError(f"--seed {args.seed} names a seed of --variant, which is missing; add --variant "
                         "backbone-loss-sampling, or name the run's best.pt with --checkpoint")
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    elif args.variant:
        seed = grid_seeds(config)[0] if args.seed is None else args.seed
        checkpoint = Path(run.best(args.variant, seed))
    else:
        metrics = [Path(run.evaluation_metrics(v, s)) for v in expand_variants(config) for s in grid_seeds(config)]
        missing = [str(path) for path in metrics if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"choosing by validation needs every run evaluated; missing: {', '.join(missing)}"
                                    "; run the pipeline (snakemake) first, or name a run with --checkpoint")
        checkpoint = chosen_checkpoint(metrics)
    return config, run, checkpoint


def cmd_export(args: argparse.Namespace) -> None:
    from cocoseg.deployment import export_verified

    config, run, checkpoint = _export_settings(args)
    settings = config["export"]
    out = Path(args.out or run.onnx_model)
    export_verified(checkpoint, out, config["run"], args.manifest or run.manifest, run.root,
                    settings["batch_size"], args.threads or settings["threads"], settings["logit_tolerance"],
                    settings["miou_tolerance"])
    print(f"{out} and {out.with_suffix('.json')}: verified on the test split")


def cmd_deployment(args: argparse.Namespace) -> None:
    from cocoseg.config import load_config
    from cocoseg.deployment import write_deployment
    from cocoseg.export import read_sidecar

    config = load_config(args.configfile)
    run = _run(args, config)
    model = args.model or run.onnx_model
    table = (Path(args.out_dir) / Path(run.deployment).name).as_posix() if args.out_dir else run.deployment
    settings = config["export"]
    frame = write_deployment(model, read_sidecar(model)["provenance"]["checkpoint"], args.manifest or run.manifest,
                             run.root, table, html_of(table), settings["batch_size"],
                             settings["timing_seconds"], args.threads or settings["threads"])
    print(frame.drop(columns=["cpu"]).to_string(index=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cocoseg", description=__doc__)
    parser.add_argument("--log", help="also write the log to this file")
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str, func: Callable[[argparse.Namespace], None], text: str) -> argparse.ArgumentParser:
        sub = steps.add_parser(name, help=text, description=text)
        sub.set_defaults(func=func)
        return sub

    sub = step("validate", cmd_validate, "check a config file against the schema")
    sub.add_argument("configfile")

    sub = step("synth", cmd_synth, "write a synthetic COCO-format dataset (images zip, annotations zip)")
    sub.add_argument("--images-zip", required=True)
    sub.add_argument("--annotations-zip", required=True)
    sub.add_argument("--num-images", type=int, **_config_default("dataset.synthetic.num_images"))
    sub.add_argument("--seed", type=int, **_config_default("dataset.synthetic.seed"))
    sub.add_argument("--size", type=_size, nargs="+", metavar="WxH", **_config_default(
        "dataset.synthetic.sizes", "image sizes, drawn at random per image",
        lambda sizes: " ".join(f"{width}x{height}" for width, height in sizes)))

    sub = step("download", cmd_download, "download a URL (http, https, file) with resume and verification")
    sub.add_argument("url")
    sub.add_argument("dest")
    sub.add_argument("--sha256")
    sub.add_argument("--retries", type=int, **_config_default("dataset.download.retries"))
    sub.add_argument("--timeout", type=float, **_config_default("dataset.download.timeout",
                                                                "seconds without data before an attempt is retried"))

    sub = step("extract", cmd_extract, "extract one member (--member) or the candidate images of the classes")
    sub.add_argument("archive")
    sub.add_argument("--dest", required=True, help="file (with --member) or images folder")
    sub.add_argument("--member")
    sub.add_argument("--annotations")
    sub.add_argument("--classes", nargs="+")
    sub.add_argument("--listing", help="CSV listing what happened to each image")
    sub.add_argument("--threads", type=int, default=1)

    sub = step("select", cmd_select, "select usable candidate images; write selected, rejected, instances")
    sub.add_argument("--annotations", required=True)
    sub.add_argument("--images-dir", required=True)
    sub.add_argument("--classes", nargs="+", required=True)
    sub.add_argument("--out-dir", required=True)
    sub.add_argument("--max-images", type=int, **_config_default("dataset.max_images", "a seeded sample of this many",
                                                                 lambda _: "all usable candidates"))
    sub.add_argument("--seed", type=int, **_config_default("dataset.seed"))
    sub.add_argument("--crowd", choices=["ignore", "label", "background"], **_config_default("dataset.crowd"))
    sub.add_argument("--threads", type=int, default=1)

    sub = step("masks", cmd_masks, "write the label masks of one shard and their pixel counts")
    sub.add_argument("--instances", required=True)
    sub.add_argument("--masks-dir", required=True)
    sub.add_argument("--counts", required=True)
    sub.add_argument("--crowd", choices=["ignore", "label", "background"], **_config_default("dataset.crowd"))
    sub.add_argument("--shard", type=int, default=0)
    sub.add_argument("--num-shards", type=int, default=1, help="default: 1, every mask (the workflow shares them "
                     "among masks.shards jobs, which write the same masks)")

    sub = step("split", cmd_split, "stratified seeded split; write manifest.csv and splits.csv")
    sub.add_argument("--selected", required=True)
    sub.add_argument("--counts", nargs="+", required=True)
    sub.add_argument("--classes", nargs="+", required=True)
    sub.add_argument("--manifest", required=True)
    sub.add_argument("--splits", required=True)
    sub.add_argument("--fractions", type=_fraction, nargs=3, default=[("train", 0.8), ("val", 0.1), ("test", 0.1)],
                     metavar="NAME=FRACTION", help="default: train=0.8 val=0.1 test=0.1 (the config has none: "
                     "split.train, split.val and split.test are required there)")
    sub.add_argument("--seed", type=int, **_config_default("split.seed"))
    sub.add_argument("--images-dir")
    sub.add_argument("--mask-dirs", nargs="+", metavar="FOLDER",
                     help="each --counts file's masks, relative to the run folder, in the same order (the workflow's: "
                          f"{RunPaths.mask_folder(0)} {RunPaths.mask_folder(1)} ...); default: data/masks for all")

    sub = step("stats", cmd_stats, "class distribution tables and histograms")
    sub.add_argument("--manifest", required=True)
    sub.add_argument("--classes", nargs="+", required=True)
    sub.add_argument("--out-dir", required=True, help="writes tables/ and figures/ below it")

    sub = step("cache", cmd_cache, "write the train and val splits as resized uint8 arrays for training")
    sub.add_argument("--manifest", required=True, help=EXAMPLE.manifest)
    sub.add_argument("--run-dir", help=RUN_DIR_HELP)
    sub.add_argument("--image-size", type=int, required=True)
    sub.add_argument("--out-dir", required=True, help=f"e.g. {EXAMPLE.cache_dir(256)}")
    sub.add_argument("--threads", type=int, default=1)

    sub = step("train", cmd_train, "train one variant of a config (resumes from its last checkpoint); "
               "under torchrun, one rank of a DistributedDataParallel run")
    sub.add_argument("--configfile", required=True)
    sub.add_argument("--variant", required=True, help="backbone-loss-sampling, e.g. resnet50-focal_tversky-uniform")
    sub.add_argument("--manifest", help=f"default: {EXAMPLE.manifest}")
    sub.add_argument("--run-dir", help=RUN_DIR_HELP)
    sub.add_argument("--seed", type=int, help="default: the first of grid.seeds")
    sub.add_argument("--out-dir", help=f"default: {EXAMPLE.model_dir('<variant>', '<seed>')}")
    sub.add_argument("--cache-dir", help=f"default: {EXAMPLE.cache_dir('<image_size>')} (built when missing)")
    sub.add_argument("--threads", type=int, help="the job's cores, shared among this machine's ranks "
                     "(default: torch's, one per core)")
    sub.add_argument("--nproc", type=int, default=1,
                     help="processes (one per GPU) for DistributedDataParallel, like torchrun --nproc-per-node")

    sub = step("evaluate", cmd_evaluate, "evaluate a checkpoint on the validation and test splits")
    sub.add_argument("--checkpoint", required=True)
    sub.add_argument("--manifest", required=True, help=EXAMPLE.manifest)
    sub.add_argument("--run-dir", help=RUN_DIR_HELP)
    sub.add_argument("--out-dir", required=True)
    sub.add_argument("--batch-size", type=int, **_config_default("evaluate.batch_size"))
    sub.add_argument("--num-workers", type=int, **_config_default("train.num_workers"))
    sub.add_argument("--threads", type=int, help="intra-op threads (default: torch's, one per core)")
    sub.add_argument("--device", **_config_default("train.device"))
    sub.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="default: the checkpoint's train.precision")
    sub.add_argument("--engine", choices=["pytorch", "onnxruntime", "openvino"], **_config_default(
        "evaluate.engine", "what runs the network; onnxruntime, openvino: the checkpoint exported to ONNX, on the CPU"))

    sub = step("compare", cmd_compare, "intervals, paired comparisons and a power report of every evaluated variant "
               "with evaluate.reference: tables/comparison.{csv,html}, comparison_per_class.csv, figures/forest.png")
    sub.add_argument("--configfile", required=True)
    sub.add_argument("--out-dir", help=f"default: {EXAMPLE.root}")

    sub = step("export", cmd_export, "export a run to ONNX (opset 17, dynamic batch and size) with its sidecar "
               "JSON, verified against PyTorch on the test split; by default the run validation chooses")
    sub.add_argument("--configfile", required=True)
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", help="any run's best.pt (default: the run validation chooses)")
    which.add_argument("--variant", help="a variant of the config (with --seed, default the grid's first)")
    sub.add_argument("--seed", type=int)
    sub.add_argument("--manifest", help=f"default: {EXAMPLE.manifest}")
    sub.add_argument("--run-dir", help=RUN_DIR_HELP)
    sub.add_argument("--out", help=f"the .onnx file (default: {EXAMPLE.onnx_model}); the sidecar goes "
                     "beside it as .json")
    sub.add_argument("--threads", type=int, help="default: export.threads")

    sub = step("deployment", cmd_deployment, "time an exported model on PyTorch, ONNX Runtime and OpenVINO with "
               "each one's test mIoU: tables/deployment.{csv,html}")
    sub.add_argument("--configfile", required=True)
    sub.add_argument("--model", help=f"default: {EXAMPLE.onnx_model}")
    sub.add_argument("--manifest", help=f"default: {EXAMPLE.manifest}")
    sub.add_argument("--run-dir", help=RUN_DIR_HELP)
    sub.add_argument("--out-dir", help=f"default: {Path(EXAMPLE.deployment).parent}")
    sub.add_argument("--threads", type=int, help="default: export.threads")

    sub = step("predict", cmd_predict, "write label masks and overlays for new images, with a checkpoint or an "
               "exported ONNX model")
    network = sub.add_mutually_exclusive_group(required=True)
    network.add_argument("--checkpoint", help="a trained best.pt")
    network.add_argument("--model", help="an exported model.onnx (its model.json beside it); ONNX Runtime, fp32")
    sub.add_argument("--out-dir", required=True)
    sub.add_argument("--device", **_config_default("train.device"))
    sub.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="default: the checkpoint's train.precision")
    sub.add_argument("--threads", type=int, help="intra-op threads (default: torch's, one per core)")
    sub.add_argument("images", nargs="+")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with logged(args.log):
            args.func(args)
    except Exception as e:  # logged() has written the traceback; the user gets one clear line last
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
