# The chosen model exported to ONNX and verified on the test split, then timed on the CPU runtimes.
# Which run is chosen (first configuration by mean validation mIoU, its best-validation seed) is read from
# the evaluations, so the rule takes every run's; a run named by hand: `python -m cocoseg export --checkpoint`.


rule export:
    input:
        metrics=runs(rules.evaluate.output.metrics),
        models=runs(rules.train.output.model),
        manifest=rules.split.output.manifest,
    output:
        model=RUN.onnx_model,
        sidecar=RUN.sidecar,
    params:
        run=lookup(dpath="run", within=config),
        run_dir=run_folder,
        logit_tolerance=lookup(dpath="export/logit_tolerance", within=config),
        miou_tolerance=lookup(dpath="export/miou_tolerance", within=config),
    threads: lookup(dpath="export/threads", within=config)
    log:
        RUN.log("export"),
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
        table=RUN.deployment,
        table_html=report(html_of(RUN.deployment), category="Evaluation",
                          caption="../../report/deployment.rst"),
    params:
        run_dir=run_folder,
    threads: lookup(dpath="export/threads", within=config)
    log:
        RUN.log("deployment"),
    benchmark:
        RUN.benchmark("deployment")
    conda:
        "../../envs/train.yaml"
    message:
        "Timing the exported model on PyTorch, ONNX Runtime and OpenVINO"
    script:
        "../scripts/deployment.py"
