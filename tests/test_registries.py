"""The names a config may use are the library's registries: the schema lists exactly those, everywhere it lists them."""

import re

import yaml
from conftest import REPO

from cocoseg.device import PRECISIONS
from cocoseg.losses import LOSSES, WEIGHT_SCHEMES
from cocoseg.models import BACKBONES
from cocoseg.sampling import SAMPLINGS

REGISTRIES = {"backbones": tuple(BACKBONES), "losses": LOSSES, "samplings": SAMPLINGS,
              "class weights": WEIGHT_SCHEMES, "precisions": PRECISIONS}
VARIANT_PATTERN = "^({})-({})-({})$".format(*("|".join(names) for names in (BACKBONES, LOSSES, SAMPLINGS)))


def schema_nodes(node, path=""):
    """Every (path, mapping) of the schema."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from schema_nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schema_nodes(value, f"{path}/{index}")


def listed(registry):
    """(path, enum) of each schema enum that shares two names or more with ``registry`` (``auto`` and ``none``
    alone are in several)."""
    schema = yaml.safe_load((REPO / "src" / "cocoseg" / "schema.yaml").read_text())
    return [(path, node["enum"]) for path, node in schema_nodes(schema)
            if isinstance(node.get("enum"), list) and len(set(map(str, node["enum"])) & set(registry)) >= 2]


def test_every_schema_enum_of_a_registry_lists_exactly_its_names():
    where = {name: listed(registry) for name, registry in REGISTRIES.items()}
    assert len(where["backbones"]) >= 2 and all(where.values()), where  # backbones: grid and train.overrides
    for name, registry in REGISTRIES.items():
        for path, enum in where[name]:
            assert sorted(map(str, enum)) == sorted(registry), f"{path}: {enum} is not {name} {list(registry)}"


def test_variant_patterns_are_built_from_the_registries():
    schema = yaml.safe_load((REPO / "src" / "cocoseg" / "schema.yaml").read_text())
    patterns = [(path, node["pattern"]) for path, node in schema_nodes(schema)
                if isinstance(node.get("pattern"), str) and any(b in node["pattern"] for b in BACKBONES)]
    assert len(patterns) >= 2, patterns  # grid.variants and evaluate.reference
    for path, pattern in patterns:
        assert pattern == VARIANT_PATTERN, f"{path}: {pattern} is not {VARIANT_PATTERN}"
    assert re.match(VARIANT_PATTERN, "mobilenet_v3_large-focal_tversky-oversample")
    assert all("-" not in name for registry in (BACKBONES, LOSSES, SAMPLINGS) for name in registry)
