# Tables and figures across variants and seeds, each marked for `snakemake --report`.


rule tables:
    input:
        metrics=runs(rules.evaluate.output.metrics),
        training=runs(rules.train.output.summary),
    output:
        summary=f"{RUN}/tables/summary.csv",
        summary_html=report(f"{RUN}/tables/summary.html", category="Evaluation",
                            caption="../../report/summary.rst"),
        per_class=f"{RUN}/tables/per_class_iou.csv",
        per_class_html=report(f"{RUN}/tables/per_class_iou.html", category="Evaluation",
                              caption="../../report/per_class_iou.rst"),
    params:
        classes=CLASSES,
    log:
        f"{RUN}/logs/tables.log",
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
        table=f"{RUN}/tables/comparison.csv",
        table_html=report(f"{RUN}/tables/comparison.html", category="Evaluation",
                          caption="../../report/comparison.rst"),
        per_class=f"{RUN}/tables/comparison_per_class.csv",
        forest=report(f"{RUN}/figures/forest.png", category="Evaluation", caption="../../report/forest.rst"),
        power=report(f"{RUN}/figures/power.png", category="Evaluation", caption="../../report/power.rst"),
    params:
        classes=CLASSES,
        reference=lookup(dpath="evaluate/reference", within=config),
    log:
        f"{RUN}/logs/compare.log",
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
        report(f"{RUN}/figures/training_curves.png", category="Training", caption="../../report/training_curves.rst"),
    params:
        runs=runs("{variant} seed {seed}"),
    log:
        f"{RUN}/logs/curves.log",
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
        per_class=report(f"{RUN}/figures/per_class_iou.png", category="Evaluation",
                         caption="../../report/per_class_iou_figure.rst"),
        confusion=report(f"{RUN}/figures/confusion.png", category="Evaluation",
                         caption="../../report/confusion.rst"),
    params:
        variants=[f"{variant} seed {SEEDS[0]}" for variant in VARIANTS],
    log:
        f"{RUN}/logs/evaluation_figures.log",
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
        sample=report(f"{RUN}/figures/predictions/{{variant}}.png", category="Predictions",
                      subcategory="{variant}", caption="../../report/predictions.rst"),
        worst=report(f"{RUN}/figures/worst/{{variant}}.png", category="Predictions",
                     subcategory="{variant}", caption="../../report/worst.rst"),
    params:
        classes=CLASSES,
        sample_size=lookup(dpath="evaluate/prediction_images", within=config),
        worst=lookup(dpath="evaluate/worst_images", within=config),
        seed=lookup(dpath="evaluate/seed", within=config),
    log:
        f"{RUN}/logs/prediction_figures_{{variant}}.log",
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
        config=f"{RUN}/provenance/config.yaml",
        table=report(f"{RUN}/provenance/provenance.html", category="Provenance",
                     caption="../../report/provenance.rst"),
    params:
        config=config,
        commit=GIT_COMMIT,
    log:
        f"{RUN}/logs/provenance.log",
    conda:
        "../../envs/train.yaml"
    message:
        "Recording the config, code version, packages and machine"
    script:
        "../scripts/provenance.py"
