# Tables and figures across variants and seeds, each marked for `snakemake --report`.


rule tables:
    input:
        metrics=runs(rules.evaluate.output.metrics),
        training=runs(rules.train.output.summary),
    output:
        summary=RUN.summary,
        summary_html=report(html_of(RUN.summary), category="Evaluation",
                            caption="../../report/summary.rst"),
        per_class=RUN.per_class_iou,
        per_class_html=report(html_of(RUN.per_class_iou), category="Evaluation",
                              caption="../../report/per_class_iou.rst"),
    params:
        classes=CLASSES,
    log:
        RUN.log("tables"),
    conda:
        "../../envs/train.yaml"
    message:
        "Result tables of {} variants x {} seeds".format(len(VARIANTS), len(SEEDS))
    script:
        "../scripts/tables.py"


rule compare:
    input:
        metrics=runs(rules.evaluate.output.metrics),
        training=runs(rules.train.output.summary),
        per_image_confusion=runs(rules.evaluate.output.per_image_confusion),
    output:
        table=RUN.comparison,
        table_html=report(html_of(RUN.comparison), category="Evaluation",
                          caption="../../report/comparison.rst"),
        per_class=RUN.comparison_per_class,
        forest=report(RUN.forest, category="Evaluation", caption="../../report/forest.rst"),
        power=report(RUN.power, category="Evaluation", caption="../../report/power.rst"),
    params:
        classes=CLASSES,
        reference=lookup(dpath="evaluate/reference", within=config),
    log:
        RUN.log("compare"),
    conda:
        "../../envs/train.yaml"
    message:
        "Comparing {} variants with {{params.reference}}: intervals, paired tests and power".format(len(VARIANTS))
    script:
        "../scripts/compare.py"


rule curves:
    input:
        runs(rules.train.output.metrics),
    output:
        report(RUN.training_curves, category="Training", caption="../../report/training_curves.rst"),
    params:
        runs=runs("{variant} seed {seed}"),
    log:
        RUN.log("curves"),
    conda:
        "../../envs/train.yaml"
    message:
        "Training curves"
    script:
        "../scripts/curves.py"


rule evaluation_figures:
    input:
        per_class=rules.tables.output.per_class,
        confusion=expand(rules.evaluate.output.confusion, variant=VARIANTS, seed=SEEDS[0]),
    output:
        per_class=report(RUN.per_class_iou_figure, category="Evaluation",
                         caption="../../report/per_class_iou_figure.rst"),
        confusion=report(RUN.confusion_figure, category="Evaluation",
                         caption="../../report/confusion.rst"),
    params:
        variants=[f"{variant} seed {SEEDS[0]}" for variant in VARIANTS],
    log:
        RUN.log("evaluation_figures"),
    conda:
        "../../envs/train.yaml"
    message:
        "Per-class IoU and confusion figures"
    script:
        "../scripts/evaluation_figures.py"


rule prediction_figures:
    input:
        evaluation=lambda wildcards: expand(rules.evaluate.output.per_image, variant=wildcards.variant,
                                            seed=SEEDS[0])[0],
        manifest=rules.split.output.manifest,
    output:
        sample=report(RUN.prediction_sample(), category="Predictions",
                      subcategory="{variant}", caption="../../report/predictions.rst"),
        worst=report(RUN.worst_predictions(), category="Predictions",
                     subcategory="{variant}", caption="../../report/worst.rst"),
    params:
        classes=CLASSES,
        sample_size=lookup(dpath="evaluate/prediction_images", within=config),
        worst=lookup(dpath="evaluate/worst_images", within=config),
        seed=lookup(dpath="evaluate/seed", within=config),
        run_dir=run_folder,
    log:
        RUN.log("prediction_figures_{variant}"),
    conda:
        "../../envs/train.yaml"
    message:
        "Prediction figures of {wildcards.variant}"
    script:
        "../scripts/prediction_figures.py"


rule results:
    input:
        rules.tables.output,
        rules.compare.output,
        rules.curves.output,
        rules.evaluation_figures.output,
        expand(rules.prediction_figures.output, variant=VARIANTS),


rule provenance:
    output:
        config=RUN.provenance_config,
        table=report(RUN.provenance_table, category="Provenance",
                     caption="../../report/provenance.rst"),
    params:
        config=config,
        commit=GIT_COMMIT,
    log:
        RUN.log("provenance"),
    conda:
        "../../envs/train.yaml"
    message:
        "Recording the config, code version, packages and machine"
    script:
        "../scripts/provenance.py"
