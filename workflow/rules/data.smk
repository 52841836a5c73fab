# The data stage: archives -> extracted files -> selection -> masks (sharded) -> split -> histograms.


rule synth:
    output:
        images=RES.served("images"),
        annotations=RES.served("annotations"),
    params:
        num_images=lookup(dpath="dataset/synthetic/num_images", within=config),
        seed=lookup(dpath="dataset/synthetic/seed", within=config),
        sizes=lookup(dpath="dataset/synthetic/sizes", within=config),
    log:
        RUN.log("synth"),
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
        RES.archive(),
    params:
        url=lambda wildcards: archive_url(wildcards.archive),
        sha256=lambda wildcards: archive_sha256(wildcards.archive),
        retries=lookup(dpath="dataset/download/retries", within=config),
        timeout=lookup(dpath="dataset/download/timeout", within=config),
    wildcard_constraints:
        archive="images|annotations",
    log:
        RUN.log("download_{archive}"),
    conda:
        "../../envs/data.yaml"
    message:
        "Downloading the {wildcards.archive} archive from {params.url}"
    script:
        "../scripts/download.py"


rule extract_annotations:
    input:
        RES.archive("annotations"),
    output:
        RES.annotations,
    params:
        member=lookup(dpath="dataset/download/annotations_member", within=config),
    log:
        RUN.log("extract_annotations"),
    conda:
        "../../envs/data.yaml"
    message:
        "Extracting {params.member}"
    script:
        "../scripts/extract_annotations.py"


rule extract_images:
    input:
        archive=RES.archive("images"),
        annotations=rules.extract_annotations.output[0],
    output:
        images=directory(EXTRACTED),
        listing=RES.images_listing(CLASS_SET),
    params:
        classes=sorted(CLASSES),  # the candidates, like the folder, do not depend on the classes' order
    threads: 2
    log:
        RUN.log("extract_images"),
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
        selected=RUN.selected,
        rejected=RUN.rejected,
        instances=RUN.instances,
    params:
        classes=CLASSES,
        max_images=lookup(dpath="dataset/max_images", within=config),
        seed=lookup(dpath="dataset/seed", within=config),
        crowd=lookup(dpath="dataset/crowd", within=config),
    threads: 4
    log:
        RUN.log("select"),
    benchmark:
        RUN.benchmark("select")
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
        counts=RUN.mask_counts(),
        # One folder per shard: Snakemake tracks (and cleans) what each job writes.
        masks=directory(RUN.masks()),
    params:
        crowd=lookup(dpath="dataset/crowd", within=config),
        num_shards=len(MASK_SHARDS),
    wildcard_constraints:
        shard=r"\d+",
    log:
        RUN.log("masks_{shard}"),
    benchmark:
        RUN.benchmark("masks_{shard}")
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
        manifest=RUN.manifest,
        splits=RUN.splits,
    params:
        classes=CLASSES,
        mask_dirs=[RUN.mask_folder(shard) for shard in MASK_SHARDS],
        fractions={name: lookup(dpath=f"split/{name}", within=config) for name in ("train", "val", "test")},
        seed=lookup(dpath="split/seed", within=config),
        images_dir=images_dir(),
    log:
        RUN.log("split"),
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
        table=RUN.class_distribution,
        table_html=report(
            html_of(RUN.class_distribution),
            category="Data",
            caption="../../report/class_distribution.rst",
        ),
        images_figure=report(
            RUN.class_images,
            category="Data",
            caption="../../report/class_images.rst",
        ),
        pixels_figure=report(
            RUN.class_pixels,
            category="Data",
            caption="../../report/class_pixels.rst",
        ),
    params:
        classes=CLASSES,
    log:
        RUN.log("stats"),
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
