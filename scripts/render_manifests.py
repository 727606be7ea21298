#!/usr/bin/env python3
"""Render a kustomization directory (deploy/overlays/*, deploy/multinode) without kustomize.

Supports the subset of kustomize that deploy/ uses, and refuses anything else so a render is
never silently different from `kubectl apply -k`:
- `resources`: YAML files or directories with their own kustomization.yaml;
- `patches`: entries with only a `path` to a strategic-merge patch, matched to one object by
  apiVersion, kind and metadata.name;
- `namespace`: set on every namespaced object.

Strategic merge here: maps merge recursively, a null value deletes the key, the lists that
Kubernetes merges by key (containers and volumes by name, env by name, volumeMounts by
mountPath, ports by containerPort/port) merge item by item (patched items first, as kustomize
orders them), every other list is replaced.

    python scripts/render_manifests.py deploy/overlays/multi-gpu > rendered.yaml
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "patches", "namespace"}
# Lists that Kubernetes' strategic merge merges item by item, and the key that identifies
# an item (ports: containerPort in a container, port in a Service).
LIST_MERGE_KEYS = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "imagePullSecrets": ("name",),
    "ports": ("containerPort", "port"),
}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}


class RenderError(ValueError):
    """A kustomization that this renderer cannot render faithfully."""


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document of a file, each of which must be a mapping."""
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as error:
        raise RenderError(f"{path}: not valid YAML: {error}") from error
    manifests = [doc for doc in documents if doc is not None]
    for doc in manifests:
        if not isinstance(doc, dict):
            raise RenderError(f"{path}: a document is a {type(doc).__name__}, not a mapping")
    return manifests


def find_kustomization(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise RenderError(f"{directory}: no kustomization.yaml")


def identity(manifest: Manifest) -> tuple[str, str, str]:
    metadata = manifest.get("metadata") or {}
    return (str(manifest.get("apiVersion")), str(manifest.get("kind")), str(metadata.get("name")))


def _merge_key(items: list[Any], candidates: tuple[str, ...]) -> str | None:
    """The first candidate key that every item of both lists carries."""
    if not all(isinstance(item, dict) for item in items):
        return None
    for key in candidates:
        if all(key in item for item in items):
            return key
    return None


def _merge_list(field: str, base: list[Any], patch: list[Any]) -> list[Any]:
    key = _merge_key(base + patch, LIST_MERGE_KEYS.get(field, ()))
    if key is None:
        return copy.deepcopy(patch)
    # Same order as kustomize: the patch's items first, then the base items it left alone.
    by_key = {item[key]: item for item in base}
    merged = [
        strategic_merge(by_key[item[key]], item) if item[key] in by_key else copy.deepcopy(item)
        for item in patch
    ]
    patched = {item[key] for item in patch}
    merged.extend(copy.deepcopy(item) for item in base if item[key] not in patched)
    return merged


def strategic_merge(base: Manifest, patch: Manifest) -> Manifest:
    """`base` with `patch` applied (neither is modified)."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise RenderError(f"patch directive {key!r} is not supported by this renderer")
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = strategic_merge(merged[key], value)
        elif isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = _merge_list(key, merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _apply_patch(manifests: list[Manifest], patch: Manifest, source: Path) -> None:
    target = identity(patch)
    matches = [index for index, manifest in enumerate(manifests) if identity(manifest) == target]
    if len(matches) != 1:
        raise RenderError(
            f"{source}: patch for {target[1]}/{target[2]} ({target[0]}) matches "
            f"{len(matches)} objects, expected exactly 1"
        )
    manifests[matches[0]] = strategic_merge(manifests[matches[0]], patch)


def _load_resource(directory: Path, entry: str) -> list[Manifest]:
    path = (directory / entry).resolve()
    if path.is_dir():
        return render(path)
    if path.is_file():
        return load_documents(path)
    raise RenderError(f"{directory}: resource {entry!r} does not exist")


def render(directory: Path) -> list[Manifest]:
    """The objects that `kubectl kustomize directory` produces, in resource order."""
    kustomization_path = find_kustomization(directory)
    kustomization = load_documents(kustomization_path)[0]
    unsupported = set(kustomization) - SUPPORTED_KEYS
    if unsupported:
        raise RenderError(f"{kustomization_path}: unsupported fields {sorted(unsupported)}")
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        manifests.extend(_load_resource(directory, entry))
    seen: set[tuple[str, str, str]] = set()
    for manifest in manifests:
        if identity(manifest) in seen:
            raise RenderError(f"{kustomization_path}: duplicate object {identity(manifest)}")
        seen.add(identity(manifest))
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise RenderError(f"{kustomization_path}: patches support only `path`, got {entry}")
        patch_path = directory / entry["path"]
        for patch in load_documents(patch_path):
            _apply_patch(manifests, patch, patch_path)
    namespace = kustomization.get("namespace")
    if namespace:
        for manifest in manifests:
            if manifest.get("kind") not in CLUSTER_SCOPED_KINDS:
                manifest.setdefault("metadata", {})["namespace"] = namespace
    return manifests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="directory with a kustomization.yaml")
    args = parser.parse_args(argv)
    try:
        manifests = render(args.directory)
    except RenderError as error:
        print(f"render_manifests: {error}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(manifests, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
