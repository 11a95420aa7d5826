"""The passive liveness check: MiniFASNetV2 (2.7× crop) and MiniFASNetV1SE (4.0× crop), fused by averaging.

Each net sees an 80×80 BGR 0–255 crop of the face box enlarged about its centre (manifest `extra.crop_scale`)
and returns a softmax over (print attack, live, replay attack); `extra.live_index` names the live class.
The fused score is the mean of the two softmax vectors' live entries.

Crops that leave the frame follow the weights' own training and test code (Silent-Face-Anti-Spoofing's
CropImage): the enlarged box is first shrunk, if the image is too small to hold it, and then *shifted back
inside the image*, never padded. Padding would put a flat border into the crop that the nets never saw in
training — and a straight dark edge is exactly what a photo's or a phone's border looks like. A shifted crop
is off-centre but made only of real pixels, as every training crop was. Each crop records whether it was
shrunk or shifted, so benchmarks can report how often that happened.

Decision (see docs/liveness.md): live when the fused live probability exceeds the manifest's threshold. As
written here it is 0.5, fixed a priori: live is more likely than either attack class together.
`facegate calibrate liveness` (edge/liveness/calibrate.py) replaces it with a quantile of a site's live faces.
Upstream takes the arg-max of the summed softmax; it and the 0.5 rule agree whenever one class holds a
majority, and 0.5 is the stricter where none does.
A frame whose fused live probability is at most 0.05 (≥ 95 % attack) is a *high-confidence spoof*: the
temporal rule lets one such frame deny its track.

The fused check's thresholds live in a small bundle of their own, `<model dir>/minifasnet/`, written by
`write_fused` whenever `facegate models install` has put a member in and both are there: its manifest
carries the thresholds with their provenance and its file (`fusion.json`) pins the members' sha256.
`liveness.model = "auto"` — the daemon's default and `facegate liveness`'s — resolves through one function,
edge.liveness.resolve, which takes this bundle. A member whose file is missing or fails its hash is an error
naming it, never a reason to run the other net alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.atomic import staged_folder
from edge.embed import to_input
from edge.errors import ModelError
from edge.liveness.base import LivenessResult
from edge.models.manifest import Manifest, Threshold
from edge.models.registry import Registry
from edge.runtime.base import Runtime
from edge.vision.detect import Face

log = logging.getLogger(__name__)

FUSED_NAME = "minifasnet"
MEMBERS = ("minifasnet-v2", "minifasnet-v1se")
VARIANT_SUFFIXES = ("", "-tflite")  # a member's bundles: ONNX (models install, export) and TFLite (export)
FUSION_FILE = "fusion.json"
LIVE_INDEX = 1
LIVE_THRESHOLD = 0.5
CERTAIN_SPOOF = 0.05
PROVENANCE_LIVE = {
    "rule": "live iff the mean of the members' softmax live probabilities > 0.5",
    "source": "fixed a priori from the upstream decision rule (minivision-ai/Silent-Face-Anti-Spoofing test.py "
              "sums the two nets' softmax and takes the arg-max; p_live > 0.5 is its binary, stricter form)",
    "fitted_on": "nothing: not tuned on any sample, LFW or otherwise",
}
PROVENANCE_CERTAIN = {
    "rule": "a frame with fused live probability <= 0.05 (>= 95 % attack) is a high-confidence spoof; one such "
            "frame denies its track",
    "source": "fixed a priori (a round 95 % confidence), not fitted; its rate on live faces is measured by "
              "`facegate bench liveness` (certain_spoof_on_live)",
    "fitted_on": "nothing",
}


# -- crops ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Crop:
    image: np.ndarray  # (h, w, 3) BGR uint8, resized to the net's input
    box: tuple[int, int, int, int]  # the pixels taken, x1, y1, x2, y2 inclusive
    scale: float  # the scale actually used (smaller than asked when the image could not hold the box)
    shrunk: bool
    shifted: bool

    @property
    def adjusted(self) -> bool:
        return self.shrunk or self.shifted


def crop_face(image: np.ndarray, box: Sequence[float], scale: float, size: tuple[int, int] = (80, 80)) -> Crop:
    """The face box (x1, y1, x2, y2) enlarged `scale`× about its centre, kept inside the image, resized.

    As in the weights' training code: the scale is lowered to what the image can hold, then a box sticking out
    on one side is moved back in (its far side moves with it), and the pixels are resized without padding.
    """
    ih, iw = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    used = min(float(scale), (ih - 1) / bh, (iw - 1) / bw)
    cx, cy = x1 + bw / 2.0, y1 + bh / 2.0
    half_w, half_h = bw * used / 2.0, bh * used / 2.0
    left, right = _inside(cx - half_w, cx + half_w, iw - 1)
    top, bottom = _inside(cy - half_h, cy + half_h, ih - 1)
    shifted = (left, right, top, bottom) != (cx - half_w, cx + half_w, cy - half_h, cy + half_h)
    x0, y0, x1_, y1_ = int(left), int(top), int(right), int(bottom)
    patch = image[y0:y1_ + 1, x0:x1_ + 1]
    return Crop(cv2.resize(patch, size), (x0, y0, x1_, y1_), used, used < float(scale), shifted)


def _inside(lo: float, hi: float, last: float) -> tuple[float, float]:
    """Move the span [lo, hi] into [0, last] without changing its length (it fits: the scale saw to that)."""
    if lo < 0:
        lo, hi = 0.0, hi - lo
    if hi > last:
        lo, hi = lo - (hi - last), last
    return lo, hi


# -- one net ----------------------------------------------------------------------------------------------------
class Net:
    """One MiniFASNet bundle on its runtime: crops → softmax (N, 3)."""

    def __init__(self, runtime: Runtime, manifest: Manifest) -> None:
        if manifest.task != "liveness":
            raise ModelError(f"{manifest.name}: a {manifest.task!r} model, not a liveness model")
        try:
            self.scale = float(manifest.extra["crop_scale"])
            self.live_index = int(manifest.extra.get("live_index", 1))
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{manifest.name}: its manifest needs extra.crop_scale (and live_index)") from None
        self.runtime, self.manifest = runtime, manifest
        self.size = manifest.input.size or (80, 80)
        self.softmax = manifest.extra.get("output", "softmax") == "softmax"

    def crop(self, image: np.ndarray, face: Face) -> Crop:
        return crop_face(image, face.box, self.scale, self.size)

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        out = self.runtime.run({self.runtime.input_names[0]: to_input(crops, self.manifest)})[0]
        out = np.asarray(out, np.float64).reshape(len(crops), -1)
        if not self.softmax:  # logits: the published graphs end in logits unless exported with softmax
            out = np.exp(out - out.max(1, keepdims=True))
            out /= out.sum(1, keepdims=True)
        return out


# -- the check --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Assessment:
    """Everything the passive check saw for one face (the CLI and the benchmark print it)."""

    score: float  # fused live probability
    threshold: float
    certain_spoof: float
    members: dict[str, float]  # each net's live probability
    crops: dict[str, dict[str, Any]]  # each net's crop: box, scale, shrunk, shifted
    fused: tuple[float, ...]  # the mean softmax (print, live, replay), for the upstream arg-max rule
    live_index: int = 1

    @property
    def live(self) -> bool:
        return self.score > self.threshold

    @property
    def result(self) -> LivenessResult:
        return LivenessResult("live" if self.live else "spoof", self.score)

    @property
    def adjusted(self) -> bool:
        return any(c["shrunk"] or c["shifted"] for c in self.crops.values())

    @property
    def argmax_live(self) -> bool:
        """The upstream rule (arg-max of the averaged softmax), reported beside ours for comparison."""
        return int(np.argmax(self.fused)) == self.live_index

    def to_dict(self) -> dict[str, Any]:
        return {"live": self.live, "score": round(self.score, 6), "threshold": self.threshold,
                "certain_spoof": self.score <= self.certain_spoof,
                "members": {k: round(v, 6) for k, v in self.members.items()}, "crops": self.crops}


class PassiveCheck:
    """MiniFASNet nets fused by averaging their softmax; implements edge.liveness.base.LivenessCheck."""

    def __init__(self, nets: list[Net], threshold: float = LIVE_THRESHOLD, certain_spoof: float = CERTAIN_SPOOF,
                 name: str = FUSED_NAME) -> None:
        if not nets:
            raise ModelError("the passive check needs at least one MiniFASNet")
        self.nets, self.threshold, self.name = nets, float(threshold), name
        # Read by the temporal rule: a score at or below this is a high-confidence spoof.
        self.certain_spoof = float(certain_spoof)

    def assess(self, image: np.ndarray, face: Face) -> Assessment:
        members, crops, probs = {}, {}, []
        for net in self.nets:
            c = net.crop(image, face)
            p = net.probabilities(c.image[None])[0]
            # Members agree on the class order (the published nets all put live at index 1); reorder otherwise.
            probs.append(np.roll(p, LIVE_INDEX - net.live_index))
            members[net.manifest.name] = float(p[net.live_index])
            crops[net.manifest.name] = {"box": list(c.box), "scale": round(c.scale, 4), "shrunk": c.shrunk,
                                        "shifted": c.shifted}
        fused = np.mean(probs, axis=0)
        return Assessment(float(fused[LIVE_INDEX]), self.threshold, self.certain_spoof, members, crops,
                          tuple(float(v) for v in fused), LIVE_INDEX)

    def check(self, image: np.ndarray, face: Face) -> LivenessResult:
        return self.assess(image, face).result


# -- bundles ----------------------------------------------------------------------------------------------------
def _net(registry: Registry, name: str, threads: int) -> Net:
    runtime, manifest = registry.open(name, threads=threads)
    return Net(runtime, manifest)


def _thresholds(m: Manifest) -> tuple[float, float]:
    live = m.thresholds.get("live", Threshold(LIVE_THRESHOLD, "probability"))
    certain = m.thresholds.get("certain_spoof", Threshold(CERTAIN_SPOOF, "probability"))
    return live.value, certain.value


def create(registry: Registry, manifest: Manifest, threads: int = 1) -> PassiveCheck:
    """The factory edge.liveness.load calls: the fused check for "minifasnet", one net for a member bundle."""
    members = manifest.extra.get("members")
    if not members:  # a member bundle on its own (liveness.model = "minifasnet-v2")
        live, certain = _thresholds(manifest)
        return PassiveCheck([_net(registry, manifest.name, threads)], live, certain, manifest.name)
    pinned = json.loads(registry.verify(manifest).read_text())
    nets = []
    names = registry.names()
    for entry in pinned["members"]:
        if entry["name"] not in names:
            raise ModelError(f"{manifest.name}: its member {entry['name']} is not installed in {registry.model_dir}; "
                             "`facegate models install minifasnet` installs both nets and rewrites the fusion")
        m = registry.manifest(entry["name"])
        if m.sha256 != entry["sha256"]:
            raise ModelError(f"{manifest.name}: member {m.name} changed since the fusion was written "
                             f"(sha256 {m.sha256[:12]}…, pinned {entry['sha256'][:12]}…); run write_fused again "
                             "(reinstalling the members does)")
        nets.append(_net(registry, m.name, threads))
    live, certain = _thresholds(manifest)
    return PassiveCheck(nets, live, certain, manifest.name)


def litert_available() -> bool:
    try:
        from edge.runtime.litert import _interpreter_class

        _interpreter_class()
        return True
    except ModelError:
        return False


def _member(registry: Registry, name: str, prefer_tflite: bool) -> Manifest | None:
    """The installed bundle for member `name`, verified: its TFLite variant first when LiteRT is available
    (XNNPACK runs these small nets about four times faster than onnxruntime on one thread), else the ONNX
    one; None when neither is installed. An installed one whose file is missing or altered raises — it is
    never skipped in favour of the other variant or of running without this member."""
    names = registry.names()
    for candidate in ([f"{name}-tflite", name] if prefer_tflite else [name]):
        if candidate in names:
            m = registry.manifest(candidate)
            registry.verify(m)
            return m
    return None


def is_member(name: str) -> bool:
    """Whether `name` is one of the fused check's member bundles (any variant)."""
    return any(name == m + suffix for m in MEMBERS for suffix in VARIANT_SUFFIXES)


def write_fused(model_dir: Path, members: Sequence[str] = MEMBERS, prefer_tflite: bool | None = None,
                carry: Path | None = None) -> Path | None:
    """Write the fused check's bundle `<model_dir>/minifasnet/` when every member bundle is installed.

    Returns its folder, or None when a member is not installed (a member installed but corrupt raises).
    Safe to call after every install: the bundle is rewritten with the members' current sha256 (and picks up
    a TFLite variant installed since). A calibrated live threshold is kept while it was set for exactly these
    member files — from the bundle already there, or from `carry` (a fused manifest.json being installed);
    one set for other files is dropped with a warning, back to the a-priori rule.
    """
    registry = Registry(Path(model_dir))
    prefer = litert_available() if prefer_tflite is None else prefer_tflite
    found = []
    for name in members:
        m = _member(registry, name, prefer)
        if m is None:
            return None
        found.append(m)
    folder = Path(model_dir) / FUSED_NAME
    fusion = {"members": [{"name": m.name, "sha256": m.sha256, "crop_scale": m.extra.get("crop_scale")}
                          for m in found],
              "fusion": "mean of the members' softmax", "live_index": 1}
    data = (json.dumps(fusion, indent=2) + "\n").encode()
    manifest = {
        "name": FUSED_NAME, "task": "liveness", "file": FUSION_FILE, "sha256": hashlib.sha256(data).hexdigest(),
        "source": {"file": FUSION_FILE, "recipe": "edge.liveness.minifasnet.write_fused",
                   "members": ",".join(m.name for m in found)},
        "licence": "Apache-2.0", "runtime": found[0].runtime,  # required by the format; each member has its own
        "input": {"size": [80, 80], "layout": "NCHW", "colour": "BGR"},
        "output_dim": 3,
        "thresholds": {
            "live": _kept_live_threshold([p for p in (carry, folder / "manifest.json") if p], found)
            or {"value": LIVE_THRESHOLD, "metric": "probability", "provenance": PROVENANCE_LIVE},
            "certain_spoof": {"value": CERTAIN_SPOOF, "metric": "probability", "provenance": PROVENANCE_CERTAIN},
        },
        "extra": {"members": [m.name for m in found], "fusion": "mean", "live_index": 1,
                  "module": "edge.liveness.minifasnet"},
    }
    Manifest.from_dict(manifest, origin=str(folder / "manifest.json"))  # refuse what the registry would
    # Both files change together: assembled beside the model directory's bundles, then swapped in whole.
    with staged_folder(folder, Path(model_dir) / ".staging") as tmp:
        (tmp / FUSION_FILE).write_bytes(data)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def _kept_live_threshold(manifests: list[Path], members: list[Manifest]) -> dict[str, Any] | None:
    """The first calibrated live threshold in `manifests` that was set with these same member files.

    (`facegate calibrate liveness` records the members' sha256; a changed member voids the calibration.)
    """
    wanted = {m.name: m.sha256 for m in members}
    dropped = None
    for path in manifests:
        try:
            live = json.loads(Path(path).read_text())["thresholds"]["live"]
            pinned = live["provenance"]["members_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pinned == wanted:
            return live
        dropped = dropped or live
    if dropped is not None:
        log.warning("minifasnet: the calibrated live threshold %s was set for other member files; back to the "
                    "a-priori %s until `facegate calibrate liveness` is run again", dropped.get("value"),
                    LIVE_THRESHOLD)
    return None


def refresh_fused(model_dir: Path, installed_names: Sequence[str]) -> list[str]:
    """After `models install`: rewrite the fused bundle when a member was installed and both are there.

    Returns [FUSED_NAME] when it was written. A member still missing is not an error (the other may follow
    in a later install); a member installed but corrupt is one, naming it.
    """
    if not any(is_member(n) for n in installed_names):
        return []
    try:
        folder = write_fused(Path(model_dir))
    except ModelError as exc:
        raise ModelError(f"installed {', '.join(installed_names)}, but the fused liveness check cannot be "
                         f"written: {exc}") from None
    return [FUSED_NAME] if folder is not None else []


def install_fused(bundle: Path, model_dir: Path) -> str:
    """`models install <a fused bundle folder>`: written afresh for the members installed in `model_dir`,
    keeping the bundle's calibrated threshold when it was set for these same member files."""
    data = json.loads((Path(bundle) / "manifest.json").read_text())
    if write_fused(Path(model_dir), carry=Path(bundle) / "manifest.json") is None:
        raise ModelError(f"{bundle}: the fused check {data.get('name')!r} needs both {' and '.join(MEMBERS)} "
                         f"installed in {model_dir} first: `facegate models install minifasnet` installs both "
                         "nets and writes the fusion")
    return FUSED_NAME


def fuse_installed(registry: Registry, threads: int = 1) -> PassiveCheck:
    """The members installed without a fused bundle (an older install), fused here exactly as write_fused
    would, at the a-priori thresholds; a lone member runs alone under its own name."""
    prefer = litert_available()
    found = [m for m in (_member(registry, n, prefer) for n in MEMBERS) if m is not None]
    if not found:
        raise ModelError(f"no MiniFASNet liveness model is installed in {registry.model_dir}: "
                         "`facegate models install minifasnet`")
    nets = [_net(registry, m.name, threads) for m in found]
    return PassiveCheck(nets, name=FUSED_NAME if len(nets) == len(MEMBERS) else found[0].name)


def open_passive(registry: Registry | None = None, spec: str = "auto", threads: int = 1) -> PassiveCheck:
    """The passive check for the CLI and benchmarks: the one the daemon runs (edge.liveness.resolve)."""
    from edge.liveness import resolve

    registry = registry or Registry()
    check = resolve(registry, spec, threads)
    if not isinstance(check, PassiveCheck):
        raise ModelError(f"liveness model {check.name!r} is not a MiniFASNet check")
    return check
