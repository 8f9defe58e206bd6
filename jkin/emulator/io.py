"""Emulator weights on disk: safetensors (never pickle) plus a JSON manifest.

    weights/NAME.safetensors   the network parameters, flattened with '/'-joined names
    weights/NAME.json          manifest: format, architecture config, input normalisation and
                               output scale, training space, dataset (seed, size), training
                               (steps, schedule), test metrics, and the sha256 of the weights
                               file, verified on every load
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

__all__ = ["save_weights", "load_weights", "default_weights_dir", "sha256_file", "FORMAT"]

FORMAT = "jkin-cips-weights-1"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_weights_dir() -> Path:
    """$JKIN_WEIGHTS if set, else the repository's weights/ (an editable or source install)."""
    env = os.environ.get("JKIN_WEIGHTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "weights"


def save_weights(path_stem, params, manifest: dict) -> Path:
    """Write ``path_stem``.safetensors and ``path_stem``.json; returns the manifest path."""
    from flax import traverse_util
    from safetensors.numpy import save_file

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(params, sep="/")
    tensors = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in flat.items()}
    weights = stem.with_suffix(".safetensors")
    tmp = weights.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, weights)
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["weights_file"] = weights.name
    manifest["sha256"] = sha256_file(weights)
    manifest["n_parameters"] = int(sum(v.size for v in tensors.values()))
    out = stem.with_suffix(".json")
    out.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return out


def load_weights(manifest_path):
    """Read and verify a manifest and its weights; returns (params pytree, manifest dict)."""
    from flax import traverse_util
    from safetensors.numpy import load_file

    manifest_path = Path(manifest_path)
    if not manifest_path.exists():
        raise FileNotFoundError(f"no emulator manifest at {manifest_path}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{manifest_path}: format {manifest.get('format')!r} is not {FORMAT!r}"
        )
    weights = manifest_path.parent / manifest["weights_file"]
    if not weights.exists():
        raise FileNotFoundError(f"{manifest_path}: weights file {weights} is missing")
    digest = sha256_file(weights)
    if digest != manifest["sha256"]:
        raise ValueError(
            f"{weights}: sha256 {digest} does not match the manifest's {manifest['sha256']}; "
            "the weights file is corrupted or does not belong to this manifest"
        )
    flat = load_file(str(weights))
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    return params, manifest
