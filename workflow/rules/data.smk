# The data stage: archives -> extracted files -> selection -> masks (sharded) -> split -> histograms.


rule synth:
    output:
        images=f"{RES}/served/images.zip",
        annotations=f"{RES}/served/annotations.zip",
    params:
        num_images=lookup(dpath="dataset/synthetic/num_images", within=config),
        seed=lookup(dpath="dataset/synthetic/seed", within=config),
        sizes=lookup(dpath="dataset/synthetic/sizes", within=config),
    log:
        f"{RUN}/logs/synth.log",
    conda:
        "../../envs/data.yaml"
    message:
        "Generating a synthetic COCO-format dataset of {params.num_images} images"
    script:
        "../scripts/synth.py"


rule download:
    input:
        served_archive,
    output:
        f"{RES}/archives/{{archive}}.zip",
    params:
        url=lambda wildcards: archive_url(wildcards.archive),
        sha256=lambda wildcards: archive_sha256(wildcards.archive),
        retries=lookup(dpath="dataset/download/retries", within=config),
        timeout=lookup(dpath="dataset/download/timeout", within=config),
    wildcard_constraints:
        archive="images|annotations",
    log:
        f"{RUN}/logs/download_{{archive}}.log",
    conda:
        "../../envs/data.yaml"
    message:
        "Downloading the {wildcards.archive} archive from {params.url}"
    script:
        "../scripts/download.py"


rule extract_annotations:
    input:
        f"{RES}/archives/annotations.zip",
    output:
        f"{RES}/annotations/instances.json",
    params:
        member=lookup(dpath="dataset/download/annotations_member", within=config),
    log:
        f"{RUN}/logs/extract_annotations.log",
    conda:
        "../../envs/data.yaml"
    message:
        "Extracting {params.member}"
    script:
        "../scripts/extract_annotations.py"


rule extract_images:
    input:
        archive=f"{RES}/archives/images.zip",
        annotations=rules.extract_annotations.output[0],
    output:
        images=directory(EXTRACTED),
        listing=f"{EXTRACTED}.csv",
    params:
        classes=sorted(CLASSES),  # the candidates, like the folder, do not depend on the classes' order
    threads: 2
    log:
        f"{RUN}/logs/extract_images.log",
    conda:
        "../../envs/data.yaml"
    message:
        "Extracting the candidate images of {params.classes}"
    script:
        "../scripts/extract_images.py"


rule select:
    input:
        annotations=annotations_json(),
        images=images_dir(),
        extracted=extracted_listing(),
    output:
        selected=f"{RUN}/data/selected.csv",
        rejected=f"{RUN}/data/rejected.csv",
        instances=f"{RUN}/data/instances.json",
    params:
        classes=CLASSES,
        max_images=lookup(dpath="dataset/max_images", within=config),
        seed=lookup(dpath="dataset/seed", within=config),
        crowd=lookup(dpath="dataset/crowd", within=config),
    threads: 4
    log:
        f"{RUN}/logs/select.log",
    benchmark:
        f"{RUN}/benchmarks/select.tsv"
    conda:
        "../../envs/data.yaml"
    message:
        "Selecting usable images with {params.classes}"
    script:
        "../scripts/select.py"


rule masks:
    input:
        instances=rules.select.output.instances,
    output:
        counts=f"{RUN}/data/shards/pixels-{{shard}}.csv",
        # One folder per shard: Snakemake tracks (and cleans) what each job writes.
        masks=directory(f"{RUN}/data/masks/{{shard}}"),
    params:
        crowd=lookup(dpath="dataset/crowd", within=config),
        num_shards=len(MASK_SHARDS),
    wildcard_constraints:
        shard=r"\d+",
    log:
        f"{RUN}/logs/masks_{{shard}}.log",
    benchmark:
        f"{RUN}/benchmarks/masks_{{shard}}.tsv"
    conda:
        "../../envs/data.yaml"
    message:
        "Writing label masks, shard {wildcards.shard}"
    script:
        "../scripts/masks.py"


rule split:
    input:
        selected=rules.select.output.selected,
        counts=expand(rules.masks.output.counts, shard=MASK_SHARDS),
        masks=expand(rules.masks.output.masks, shard=MASK_SHARDS),
    output:
        manifest=f"{RUN}/data/manifest.csv",
        splits=f"{RUN}/data/splits.csv",
    params:
        classes=CLASSES,
        mask_dirs=[f"data/masks/{shard}" for shard in MASK_SHARDS],
        fractions=lambda wildcards: {name: config["split"][name] for name in ("train", "val", "test")},
        seed=lookup(dpath="split/seed", within=config),
        images_dir=images_dir(),
    log:
        f"{RUN}/logs/split.log",
    conda:
        "../../envs/data.yaml"
    message:
        "Splitting into train/val/test and writing the manifest"
    script:
        "../scripts/split.py"


rule stats:
    input:
        manifest=rules.split.output.manifest,
    output:
        table=f"{RUN}/tables/class_distribution.csv",
        table_html=report(
            f"{RUN}/tables/class_distribution.html",
            category="Data",
            caption="../../report/class_distribution.rst",
        ),
        images_figure=report(
            f"{RUN}/figures/class_images.png",
            category="Data",
            caption="../../report/class_images.rst",
        ),
        pixels_figure=report(
            f"{RUN}/figures/class_pixels.png",
            category="Data",
            caption="../../report/class_pixels.rst",
        ),
    params:
        classes=CLASSES,
    log:
        f"{RUN}/logs/stats.log",
    conda:
        "../../envs/data.yaml"
    message:
        "Class distribution histograms"
    script:
        "../scripts/stats.py"


rule data:
    input:
        rules.split.output,
        rules.stats.output,
