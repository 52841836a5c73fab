# Each variant's selected checkpoint on the test split, once (and on validation for comparison).


rule evaluate:
    input:
        model=rules.train.output.model,
        manifest=rules.split.output.manifest,
    output:
        metrics=f"{RUN}/models/{{variant}}/seed{{seed}}/evaluation/metrics.json",
        confusion=f"{RUN}/models/{{variant}}/seed{{seed}}/evaluation/confusion.csv",
        per_image=f"{RUN}/models/{{variant}}/seed{{seed}}/evaluation/per_image.csv",
        per_image_confusion=f"{RUN}/models/{{variant}}/seed{{seed}}/evaluation/per_image_confusion.npz",
        predictions=directory(f"{RUN}/models/{{variant}}/seed{{seed}}/evaluation/predictions"),
    params:
        # Tracked: another engine computes (slightly) other numbers.
        engine=lookup(dpath="evaluate/engine", within=config),
    threads: lookup(dpath="train/threads", within=config)
    resources:
        # Evaluation runs in one process: one GPU whatever training used.
        gpu=min(1, config["train"]["gpus"]),
        mem_mb=lookup(dpath="train/mem_mb", within=config),
        runtime=lookup(dpath="evaluate/runtime", within=config),
    log:
        f"{RUN}/logs/evaluate_{{variant}}_seed{{seed}}.log",
    benchmark:
        f"{RUN}/benchmarks/evaluate_{{variant}}_seed{{seed}}.tsv"
    conda:
        "../../envs/train.yaml"
    message:
        "Evaluating {wildcards.variant} (seed {wildcards.seed}) on the validation and test splits"
    script:
        "../scripts/evaluate.py"
