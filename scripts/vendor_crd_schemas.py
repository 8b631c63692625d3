"""Vendor the OpenAPI schemas of the operators' CRDs that deploy/k8s uses, for offline validation.

    python scripts/vendor_crd_schemas.py CRD.yaml... --out deploy/k8s/schemas

Each CRD's served storage version becomes ``<group>_<kind>_<version>.json`` (descriptions dropped: they are
most of a CRD's bytes and no part of validation). tests/test_k8s_manifests.py reads them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        # "properties" maps field names to schemas: a field may itself be called "description".
        return {
            key: (
                {name: without_descriptions(value) for name, value in child.items()}
                if key == "properties"
                else without_descriptions(child)
            )
            for key, child in node.items()
            if key != "description" or not isinstance(child, str)
        }
    if isinstance(node, list):
        return [without_descriptions(item) for item in node]
    return node


def vendor(crd_file: Path, out: Path) -> Path:
    crd = yaml.safe_load(crd_file.read_text())
    spec = crd["spec"]
    version = next(v for v in spec["versions"] if v.get("storage"))
    schema = without_descriptions(version["schema"]["openAPIV3Schema"])
    target = out / f"{spec['group']}_{spec['names']['kind'].lower()}_{version['name']}.json"
    target.write_text(json.dumps(schema, indent=None, separators=(",", ":"), sort_keys=True) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crds", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for crd_file in args.crds:
        print(vendor(crd_file, args.out))


if __name__ == "__main__":
    main()
