# The training cache per image size, then one training job per variant and seed; each resumes from its last
# checkpoint when rerun, and runs on several GPUs (DistributedDataParallel) when given them.


rule cache:
    input:
        manifest=rules.split.output.manifest,
    output:
        record=RUN.cache_record(),
        arrays=RUN.cache_arrays(),
    params:
        run_dir=run_folder,
    wildcard_constraints:
        size=r"\d+",
    threads: lookup(dpath="train/threads", within=config)
    log:
        RUN.log("cache_{size}px"),
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
        model=RUN.best(),
        metrics=RUN.training_metrics(),
        summary=RUN.training_summary(),
    params:
        settings=train_settings,
        classes=CLASSES,
        run_name=lookup(dpath="run", within=config),
        run_dir=run_folder,
    threads: lookup(dpath="train/threads", within=config)
    resources:
        gpu=lookup(dpath="train/gpus", within=config),
        mem_mb=lookup(dpath="train/mem_mb", within=config),
        runtime=lookup(dpath="train/runtime", within=config),
    log:
        RUN.log("train_{variant}_seed{seed}"),
    benchmark:
        RUN.benchmark("train_{variant}_seed{seed}")
    conda:
        "../../envs/train.yaml"
    message:
        "Training {wildcards.variant} (seed {wildcards.seed})"
    script:
        "../scripts/train.py"
