# The training cache per image size, then one training job per variant and seed; each resumes from its last
# checkpoint when rerun, and runs on several GPUs (DistributedDataParallel) when given them.


rule cache:
    input:
        manifest=rules.split.output.manifest,
    output:
        record=f"{RUN}/cache/{{size}}px/cache.json",
        arrays=[f"{RUN}/cache/{{size}}px/{split}_{kind}.npy" for split in ("train", "val") for kind in ("images", "masks")],
    wildcard_constraints:
        size=r"\d+",
    threads: lookup(dpath="train/threads", within=config)
    log:
        f"{RUN}/logs/cache_{{size}}px.log",
    conda:
        "../../envs/train.yaml"
    message:
        "Caching the train and val splits at {wildcards.size} px"
    script:
        "../scripts/cache.py"


rule train:
    input:
        manifest=rules.split.output.manifest,
        cache=variant_cache,
    output:
        model=f"{RUN}/models/{{variant}}/seed{{seed}}/best.pt",
        metrics=f"{RUN}/models/{{variant}}/seed{{seed}}/metrics.csv",
        summary=f"{RUN}/models/{{variant}}/seed{{seed}}/training.json",
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
        f"{RUN}/logs/train_{{variant}}_seed{{seed}}.log",
    benchmark:
        f"{RUN}/benchmarks/train_{{variant}}_seed{{seed}}.tsv"
    conda:
        "../../envs/train.yaml"
    message:
        "Training {wildcards.variant} (seed {wildcards.seed})"
    script:
        "../scripts/train.py"
