# One training job per variant; each resumes from its last checkpoint when rerun.


rule train:
    input:
        manifest=rules.split.output.manifest,
    output:
        model=f"{RUN}/models/{{variant}}/best.pt",
        metrics=f"{RUN}/models/{{variant}}/metrics.csv",
        summary=f"{RUN}/models/{{variant}}/training.json",
    params:
        settings=train_settings,
        classes=CLASSES,
        run_name=config["run"],
    threads: lookup(dpath="train/threads", within=config)
    resources:
        gpu=lookup(dpath="train/gpus", within=config),
        mem_mb=lookup(dpath="train/mem_mb", within=config),
        runtime=lookup(dpath="train/runtime", within=config),
    log:
        f"{RUN}/logs/train_{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/train_{{variant}}.tsv"
    conda:
        "../../envs/train.yaml"
    message:
        "Training {wildcards.variant}"
    script:
        "../scripts/train.py"
