# Each variant's selected checkpoint on the test split, once (and on validation for comparison).


rule evaluate:
    input:
        model=rules.train.output.model,
        manifest=rules.split.output.manifest,
    output:
        metrics=f"{RUN}/models/{{variant}}/evaluation/metrics.json",
        confusion=f"{RUN}/models/{{variant}}/evaluation/confusion.csv",
        per_image=f"{RUN}/models/{{variant}}/evaluation/per_image.csv",
    params:
        batch_size=lookup(dpath="evaluate/batch_size", within=config),
        num_workers=lookup(dpath="train/num_workers", within=config),
        device=lookup(dpath="train/device", within=config),
    threads: lookup(dpath="train/threads", within=config)
    resources:
        gpu=lookup(dpath="train/gpus", within=config),
        mem_mb=lookup(dpath="train/mem_mb", within=config),
    log:
        f"{RUN}/logs/evaluate_{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/evaluate_{{variant}}.tsv"
    conda:
        "../../envs/train.yaml"
    message:
        "Evaluating {wildcards.variant} on the test split"
    script:
        "../scripts/evaluate.py"
