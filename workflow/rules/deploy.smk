# The chosen model exported to ONNX and verified on the test split, then timed on the CPU runtimes.
# Which run is chosen (first configuration by mean validation mIoU, its best-validation seed) is read from
# the evaluations, so the rule takes every run's; a run named by hand: `python -m cocoseg export --checkpoint`.


rule export:
    input:
        metrics=runs(rules.evaluate.output.metrics),
        models=runs(rules.train.output.model),
        manifest=rules.split.output.manifest,
    output:
        model=f"{RUN}/deploy/model.onnx",
        sidecar=f"{RUN}/deploy/model.json",
    params:
        run=config["run"],
        logit_tolerance=lookup(dpath="export/logit_tolerance", within=config),
        miou_tolerance=lookup(dpath="export/miou_tolerance", within=config),
    threads: lookup(dpath="export/threads", within=config)
    log:
        f"{RUN}/logs/export.log",
    conda:
        "../../envs/train.yaml"
    message:
        "Exporting the model validation chose to ONNX and verifying it on the test split"
    script:
        "../scripts/export.py"


rule deployment:
    input:
        model=rules.export.output.model,
        sidecar=rules.export.output.sidecar,
        models=runs(rules.train.output.model),
        manifest=rules.split.output.manifest,
    output:
        table=f"{RUN}/tables/deployment.csv",
        table_html=report(f"{RUN}/tables/deployment.html", category="Evaluation",
                          caption="../../report/deployment.rst"),
    threads: lookup(dpath="export/threads", within=config)
    log:
        f"{RUN}/logs/deployment.log",
    benchmark:
        f"{RUN}/benchmarks/deployment.tsv"
    conda:
        "../../envs/train.yaml"
    message:
        "Timing the exported model on PyTorch, ONNX Runtime and OpenVINO"
    script:
        "../scripts/deployment.py"
