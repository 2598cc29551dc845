#!/usr/bin/env python3
"""Extracts the openAPIV3Schema of each served version of CustomResourceDefinitions
into schemas/<group>-<version>-<Kind>.json, unchanged, for check.py to validate
custom resources against (it makes them strict as it loads them; see check.py).

    python3 extract_crd_schemas.py CRD.yaml [CRD.yaml ...]

Where the checked-in files came from is in schemas/README.md: run this again on the
new CRDs when an operator is upgraded.
"""
import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent


def main(paths):
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    if not version.get("served", True):
                        continue
                    name = f"{spec['group']}-{version['name']}-{spec['names']['kind']}.json"
                    out = HERE / "schemas" / name
                    schema = version["schema"]["openAPIV3Schema"]
                    out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
                    print(f"wrote {out.relative_to(HERE)}")


if __name__ == "__main__":
    main(sys.argv[1:])
