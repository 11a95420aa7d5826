"""A trained verification head: ŷ = σ(Σ_k w_k·φ_k(a, b) + bias) over the embeddings of one or more embedders.

φ holds, element by element over the embedders' vectors laid end to end (in the head's embedder order):
|a − b|, a ⊙ b (when trained with the product features) and (a − b)² / (|a| + |b|) (χ²-style); a trained
head's per-embedder cosine and its feature standardisation are folded into these weights at export, so the
device computes three weighted sums and a sigmoid. The head ships as an ONNX bundle (task "verify_head") whose
manifest `extra` names its embedders and their dimensions; the numpy scorer here reads the weights out of that
ONNX file, so the bundle's one file is the single source of truth, and 1:N scoring is vectorised (the product
term is one matrix product against the whole gallery).

Scores are logits (higher = more alike; probability = σ(logit)): the impostor tail of a good head sits at
probabilities within float rounding of 0 and 1, where thresholds at FAR 1e-6 could not be told apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError
from edge.models.manifest import Manifest

CHI2_EPS = 1e-6
# Initializer names in the exported graph (export/train/verifier.py writes them).
WEIGHT_NAMES = {"abs": "w_abs", "prod": "w_prod", "chi2": "w_chi2"}
BIAS_NAME = "bias"


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))  # no overflow warnings for large |x|


@dataclass(frozen=True)
class VerifierHead:
    """The folded head: one weight vector per element-wise feature block over the concatenated embeddings."""

    embedders: tuple[str, ...]
    dims: tuple[int, ...]
    weights: dict[str, np.ndarray]  # block name ("abs", "prod", "chi2") → (sum(dims),) float64
    bias: float
    name: str = "verifier"
    manifest: Manifest | None = None

    @property
    def dim(self) -> int:
        return int(sum(self.dims))

    # -- inputs ----------------------------------------------------------------------------------------------------
    def concat(self, vectors: Mapping[str, np.ndarray]) -> np.ndarray:
        """{embedder: (N, D) or (D,)} → (N, sum D) in the head's order; refuses a missing or wrong-size one."""
        parts = []
        for name, d in zip(self.embedders, self.dims, strict=True):
            if name not in vectors:
                raise ModelError(f"verifier {self.name!r} needs a {name} embedding")
            v = np.asarray(vectors[name], np.float64)
            v = v.reshape(1, -1) if v.ndim == 1 else v
            if v.shape[1] != d:
                raise ModelError(f"verifier {self.name!r}: {name} embedding has {v.shape[1]} values, expected {d}")
            parts.append(v)
        return np.concatenate(parts, axis=1)

    # -- scores ----------------------------------------------------------------------------------------------------
    def logit_concat(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise logits of concatenated embedding pairs (N, sum D) × (N, sum D) → (N,)."""
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        out = np.full(len(a), self.bias)
        w = self.weights
        if "abs" in w:
            out += np.abs(a - b) @ w["abs"]
        if "prod" in w:
            out += (a * b) @ w["prod"]
        if "chi2" in w:
            out += ((a - b) ** 2 / (np.abs(a) + np.abs(b) + CHI2_EPS)) @ w["chi2"]
        return out

    def logit(self, a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.logit_concat(self.concat(a), self.concat(b))

    def probability(self, a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> np.ndarray:
        return sigmoid(self.logit(a, b))

    def logit_matrix(self, probes: np.ndarray, gallery: np.ndarray, block: int = 256) -> np.ndarray:
        """(M, sum D) probes × (K, sum D) gallery → (M, K) logits; the element-wise blocks in row blocks."""
        p, g = np.asarray(probes, np.float64), np.asarray(gallery, np.float64)
        w = self.weights
        out = np.full((len(p), len(g)), self.bias)
        if "prod" in w:
            out += p @ (g * w["prod"]).T  # Σ_k w_k a_k b_k is bilinear: one matrix product
        if "abs" in w or "chi2" in w:
            for s in range(0, len(p), block):
                d = p[s:s + block, None, :] - g[None, :, :]
                if "abs" in w:
                    out[s:s + block] += np.abs(d) @ w["abs"]
                if "chi2" in w:
                    den = np.abs(p[s:s + block, None, :]) + np.abs(g)[None, :, :] + CHI2_EPS
                    out[s:s + block] += (d * d / den) @ w["chi2"]
        return out

    # -- loading ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, path: Path, manifest: Manifest | None = None, embedders: tuple[str, ...] | None = None,
                  dims: tuple[int, ...] | None = None) -> VerifierHead:
        """Read the weights from an exported head (initializers named in WEIGHT_NAMES and BIAS_NAME)."""
        import onnx
        from onnx import numpy_helper

        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and others for a damaged file
            raise ModelError(f"{path}: not a readable ONNX file ({exc.__class__.__name__})") from None
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        weights = {k: inits[n].astype(np.float64).reshape(-1) for k, n in WEIGHT_NAMES.items() if n in inits}
        if BIAS_NAME not in inits or not weights:
            raise ModelError(f"{path}: not a facegate verification head (no {BIAS_NAME!r} / weight initializers)")
        extra: dict[str, Any] = dict(manifest.extra) if manifest else {}
        embedders = embedders or tuple(extra.get("embedders", ()))
        dims = dims or tuple(int(d) for d in extra.get("dims", ()))
        if not embedders or len(embedders) != len(dims):
            raise ModelError(f"{path}: the head's embedders and their dimensions are not known (manifest extra)")
        head = cls(embedders=embedders, dims=dims, weights=weights, bias=float(inits[BIAS_NAME].reshape(-1)[0]),
                   name=manifest.name if manifest else Path(path).stem, manifest=manifest)
        bad = [k for k, v in weights.items() if v.shape != (head.dim,)]
        if bad:
            raise ModelError(f"{path}: weight block(s) {bad} do not match the embedders' {head.dim} values")
        return head


def load_head(name: str, registry: Any = None) -> VerifierHead:
    """An installed head by name: manifest + sha256-verified file from the registry."""
    from edge.models.registry import Registry

    registry = registry or Registry()
    m = registry.manifest(name)
    if m.task != "verify_head":
        raise ModelError(f"model {name!r} is a {m.task} model, not a verification head")
    return VerifierHead.from_onnx(registry.verify(m), manifest=m)


def resolve_head(spec: str | Path, registry: Any = None) -> VerifierHead:
    """A head from an installed model name, a bundle folder (manifest.json + model) or a bare ONNX file's bundle."""
    p = Path(spec)
    if p.is_dir() and (p / "manifest.json").is_file():
        m = Manifest.load(p / "manifest.json")
        if m.task != "verify_head":
            raise ModelError(f"{p}: a {m.task} bundle, not a verification head")
        return VerifierHead.from_onnx(p / m.file, manifest=m)
    if p.suffix == ".onnx" and (p.parent / "manifest.json").is_file():
        return resolve_head(p.parent, registry)
    return load_head(str(spec), registry)


def head_identities(head: VerifierHead, images: Path) -> tuple[set[str], list[str]]:
    """Identities the head was trained or calibrated on (pairs files named in its manifest, found beside the
    images folder): a benchmark must leave them out."""
    from edge.eval.lfw import identities_of_files

    names: list[str] = []
    m = head.manifest
    if m is not None:
        trained = (m.extra.get("trained_on") or {}).get("pairs_file")
        names += [trained] if trained else []
        names += [t.provenance["pairs_file"] for t in m.thresholds.values() if t.provenance.get("pairs_file")]
    return identities_of_files(images, names, f"verifier {head.name!r} was trained/calibrated", ModelError)
