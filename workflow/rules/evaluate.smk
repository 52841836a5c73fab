# Each variant's selected checkpoint on the test split, once (and on validation for comparison).


rule evaluate:
    input:
        model=rules.train.output.model,
        manifest=rules.split.output.manifest,
    output:
        metrics=RUN.evaluation_metrics(),
        confusion=RUN.confusion(),
        per_image=RUN.per_image(),
        per_image_confusion=RUN.per_image_confusion(),
        predictions=directory(RUN.predictions()),
    params:
        # Tracked: another engine computes (slightly) other numbers.
        engine=lookup(dpath="evaluate/engine", within=config),
        run_dir=run_folder,
    threads: lookup(dpath="train/threads", within=config)
    resources:
        # Evaluation runs in one process: one GPU whatever training used.
        gpu=min(1, lookup(dpath="train/gpus", within=config)),
        mem_mb=lookup(dpath="train/mem_mb", within=config),
        runtime=lookup(dpath="evaluate/runtime", within=config),
    log:
        RUN.log("evaluate_{variant}_seed{seed}"),
    benchmark:
        RUN.benchmark("evaluate_{variant}_seed{seed}")
    conda:
        "../../envs/train.yaml"
    message:
        "Evaluating {wildcards.variant} (seed {wildcards.seed}) on the validation and test splits"
    script:
        "../scripts/evaluate.py"
