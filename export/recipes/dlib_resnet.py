"""`facegate export dlib-resnet`: dlib's face-recognition ResNet (.dat) → ONNX fp32 (and TFLite fp32) bundles.

The network is read from `dlib_face_recognition_resnet_model_v1.dat` of the face-recognition-models package
(CC0) by our own reader (edge/models/dlib_dat.py) and rebuilt in PyTorch (export/nets/dlib_resnet.py).

dlib describes a face by a 150×150 chip cut from its 5-point shape predictor's landmarks
(`get_face_chip_details(shape, 150, 0.25)`). The device has YuNet's five landmarks instead, so the bundle's
alignment template is fitted here: each face's YuNet landmarks are mapped through the transform dlib itself
would use to cut that face's chip, and the template is their mean. That needs dlib (dev extra) at export time,
never on the device.

Every bundle's parity report holds:
- `min_cosine` / `mean_cosine`: our exported file against dlib's own descriptors on dlib's own chips (the
  conversion is exact when this is ≥ 0.9999);
- `alignment`: dlib's descriptor of its own chip against ours of the chip cut by the device (YuNet + template)
  from the same photo: how well the device reproduces dlib's face chips (informational, no target).
Thresholds are calibrated through the device pipeline (edge.eval.calibrate) on a View-1 pairs file.
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.embed import Embedder, l2_normalise, to_input
from edge.errors import ImageError, NoFaceError
from edge.eval.lfw import images_named_by
from edge.imageio import load_bgr
from edge.models.manifest import AlignmentTemplate, Manifest
from edge.models.registry import Registry, sha256_file
from edge.paths import data_dir
from edge.vision.align import align, similarity_transform
from edge.vision.detect import make_detector, select_face
from export.bundle import ExportError, embedding_parity, heldout_face_crops, list_images
from export.int8_ranges import VIEW1_FILES, view1_choice
from export.recipes import EMBED_TARGETS, Built, finish, precision, stage_all, torch_to_onnx, variant_name

NAME = "dlib-resnet"
OFFERED = ("onnx-fp32", "onnx-int8", "tflite-fp32")
# A ReLU ResNet: every op quantised, onnxruntime runs it on integer kernels end to end (QLinearConv,
# QLinearAdd, QLinearAveragePool, QGemm; the Relus vanish into the uint8 clamps).
INT8_OPS = ("Conv", "Gemm", "Add", "Relu", "MaxPool", "AveragePool", "Pad", "ReduceMean")
INT8_MAX_LOSS_PP = 0.1
CHIP_SIZE = 150
CHIP_PADDING = 0.25
DAT_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_FILE = "shape_predictor_5_face_landmarks.dat"
PACKAGE = "face_recognition_models"

# Test-time flip (manifest `flip_average`): chosen on LFW View 1 only, never on View 2. Measured with the
# device path (YuNet + this template, onnx-fp32) on the 4,992 images pairsDevTrain/pairsDevTest name.
FLIP_PROVENANCE = {
    "chosen_on": "LFW View 1 (pairsDevTrain.txt + pairsDevTest.txt images); View 2 not used",
    "single_pass": {"view1_pooled_accuracy": 0.9884, "tar_at_far_1e-3": 0.9151, "tar_at_far_1e-4": 0.7635},
    "flip_average": {"view1_pooled_accuracy": 0.9900, "tar_at_far_1e-3": 0.9364, "tar_at_far_1e-4": 0.8102},
    "note": "pooled accuracy: threshold from one View-1 file, accuracy on the other, both ways; TAR@FAR over "
            "all 3,192 genuine and all cross-identity pairs of those images. Costs a second pass per face.",
}

# dlib's mean-face positions of its five shape-predictor points (get_face_chip_details), on a unit square:
# the subject's left eye outer and inner corners, right eye outer and inner corners, bottom of the nose.
DLIB_MEAN_FACE_5 = np.array([(0.8595674595992, 0.2134981538014), (0.6460604764104, 0.2289674387677),
                             (0.1205750620789, 0.2137274526848), (0.3340850613712, 0.2290642403242),
                             (0.4901123135679, 0.6277975316475)])


# -- the source files ------------------------------------------------------------------------------------------
def package_model(filename: str) -> Path:
    """A file of face-recognition-models, found without importing it (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"the dlib-resnet recipe needs the {PACKAGE} package (pip install face-recognition-models)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise ExportError(f"{path}: missing from the {PACKAGE} package")
    return path


def load_module(dat: Path | None = None) -> Any:
    """The PyTorch network with the .dat's weights (eval mode)."""
    from edge.models.dlib_dat import load_net
    from export.nets.dlib_resnet import DlibResNet

    return DlibResNet.from_dlib(load_net(dat or package_model(DAT_FILE)))


def _dlib() -> Any:
    try:
        import dlib
    except ImportError:
        raise ExportError("the dlib-resnet recipe compares against dlib itself: pip install 'facegate[dev]' "
                          "(dlib-bin)") from None
    return dlib


# -- dlib's chip geometry --------------------------------------------------------------------------------------
def dlib_chip_points(size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    return (padding + DLIB_MEAN_FACE_5) / (2 * padding + 1) * size


def dlib_chip_transform(parts: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """The 2×3 image → chip map dlib uses for a 5-point shape: get_face_chip_details + get_mapping_to_chip.

    dlib fits a similarity from its mean face to the landmarks, keeps only its angle, scale and the image
    point of the chip centre, then maps a rectangle of width size·scale − 1 (dlib's centered_drect) onto
    pixels 0 … size−1. That is not quite the fitted similarity (scale (size−1)/size, half-pixel offset), and
    cv2.warpAffine with this map reproduces dlib.get_face_chip to within rounding.
    """
    s = similarity_transform(dlib_chip_points(size, padding), np.asarray(parts, np.float64))  # chip → image
    angle = np.arctan2(s[1, 0], s[0, 0])
    scale = float(np.hypot(s[0, 0], s[1, 0]))
    centre = s[:, :2] @ np.array([size / 2.0, size / 2.0]) + s[:, 2]
    half = (size * scale - 1.0) / 2.0
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.array([centre + rot @ np.array(v) for v in ((-half, -half), (half, -half), (half, half))])
    dst = np.array([(0.0, 0.0), (size - 1.0, 0.0), (size - 1.0, size - 1.0)])
    return np.linalg.solve(np.hstack([src, np.ones((3, 1))]), dst).T


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ m[:, :2].T + m[:, 2]


@dataclass
class FacePair:
    """One photo's chosen face as both pipelines see it."""

    rel: str
    yunet: np.ndarray  # (5, 2) YuNet landmarks, device order
    dlib: np.ndarray  # (5, 2) dlib 5-point shape


class DlibFaces:
    """dlib's HOG detector + 5-point shape predictor, matched to the face the device's YuNet chose."""

    def __init__(self, registry: Registry, policy: str = "central") -> None:
        dlib = _dlib()
        self.dlib = dlib
        self.hog = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(package_model(SHAPE_FILE)))
        self.detector = make_detector(registry, "yunet", threads=1)
        self.policy = policy

    def find(self, image: np.ndarray, rel: str = "") -> FacePair | None:
        """Both pipelines' landmarks of the face YuNet picks, or None when dlib does not find that face."""
        try:
            face = select_face(self.detector.detect(image), image.shape, self.policy)
        except NoFaceError:
            return None
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        rects = list(self.hog(rgb, 0)) or list(self.hog(rgb, 1))  # upsample only when needed: 4× slower
        nx, ny = face.landmarks[2]
        rects = [r for r in rects if r.left() <= nx <= r.right() and r.top() <= ny <= r.bottom()]
        if len(rects) != 1:
            return None
        shape = self.shape(rgb, rects[0])
        parts = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
        return FacePair(rel, np.asarray(face.landmarks, np.float64), parts)

    def collect(self, images_dir: Path, rels: list[str], n: int) -> list[FacePair]:
        out = []
        for rel in rels:
            if len(out) >= n:
                break
            try:
                image = load_bgr(Path(images_dir) / rel)
            except ImageError:
                continue
            pair = self.find(image, rel)
            if pair is not None:
                out.append(pair)
        return out

    def chip(self, image: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """dlib's own chip (RGB) of the face with these 5 points."""
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        points = [self.dlib.point(int(x), int(y)) for x, y in parts]
        det = self.dlib.full_object_detection(self.dlib.rectangle(0, 0, 1, 1), points)
        return np.asarray(self.dlib.get_face_chip(rgb, det, CHIP_SIZE, CHIP_PADDING))


# -- the template ------------------------------------------------------------------------------------------------
def fit_template(faces: list[FacePair]) -> tuple[np.ndarray, dict[str, Any]]:
    """The 5-point template (YuNet order) putting YuNet's landmarks where dlib's chips have them, on average.

    Each face's YuNet landmarks are mapped through dlib's own image → chip transform for that face; the
    template is their mean, the least-squares point set. Returned with fit statistics for the manifest.
    """
    if len(faces) < 20:
        raise ExportError(f"only {len(faces)} faces for fitting the alignment template (need ≥ 20)")
    mapped = np.stack([apply_affine(dlib_chip_transform(f.dlib), f.yunet) for f in faces])
    template = mapped.mean(axis=0)
    # How far the device's alignment lands from dlib's chip, in chip pixels, over a 5×5 grid of chip points.
    grid = np.stack(np.meshgrid(np.linspace(0, CHIP_SIZE - 1, 5), np.linspace(0, CHIP_SIZE - 1, 5)), -1).reshape(-1, 2)
    errors = []
    for f in faces:
        back = np.linalg.inv(np.vstack([dlib_chip_transform(f.dlib), [0, 0, 1]]))[:2]  # chip → image
        ours = similarity_transform(f.yunet, template)
        errors.append(float(np.linalg.norm(apply_affine(ours, apply_affine(back, grid)) - grid, axis=1).mean()))
    stats = {"faces": len(faces), "method": "mean of YuNet landmarks mapped through dlib's image-to-chip transform",
             "point_std_px": np.round(mapped.std(axis=0), 3).tolist(),
             "chip_grid_error_px": {"mean": round(float(np.mean(errors)), 3),
                                    "median": round(float(np.median(errors)), 3),
                                    "p95": round(float(np.percentile(errors, 95)), 3)}}
    return template, stats


# -- the manifest -------------------------------------------------------------------------------------------------
def base_manifest(module: Any, template: np.ndarray, dat: Path, variant: str) -> dict[str, Any]:
    upstream = (f"{DAT_FILE} from the face-recognition-models package (CC0), dlib's "
                f"loss_metric ResNet; sha256 {sha256_file(dat)}")
    return {
        "name": variant_name(NAME, variant),
        "task": "embed",
        "file": "model",  # filled in by the bundle writer
        "sha256": "0" * 64,
        "source": {"upstream": upstream, "recipe": f"facegate export dlib-resnet ({variant})"},
        "licence": "CC0-1.0",
        "runtime": "litert" if variant.startswith("tflite") else "onnxruntime",
        "input": {"size": [CHIP_SIZE, CHIP_SIZE], "layout": "NCHW", "colour": "RGB"},
        # dlib's input layer: (pixel − channel mean) / 256, means as stored in the .dat.
        "normalisation": {"mean": [float(v) for v in module.input_mean], "std": [module.input_scale] * 3},
        "alignment": {"size": [CHIP_SIZE, CHIP_SIZE], "points": [[round(float(x), 4), round(float(y), 4)]
                                                                 for x, y in template]},
        "output_dim": 128,
        "thresholds": {},
        "prepare": [],
        "extra": {},
        "flip_average": True,
    }


def stage_check_manifest(module: Any, template: np.ndarray, dat: Path) -> dict[str, Any]:
    """A valid manifest of the network's input spec: what to_input needs to preprocess calibration crops."""
    return {**base_manifest(module, template, dat, "onnx-fp32"), "sha256": "0" * 64, "file": "model.onnx"}


def build_variant(variant: str, module: Any, out: Path, calib_x: np.ndarray | None = None) -> Path:
    shape = (1, 3, CHIP_SIZE, CHIP_SIZE)
    if variant == "onnx-fp32":
        return torch_to_onnx(module, shape, out)
    if variant == "onnx-int8":
        from export.quantize import quantize_int8

        if calib_x is None:
            raise ExportError("the int8 variant needs calibration crops")
        fp32 = torch_to_onnx(module, shape, out.with_name(out.stem + "-fp32.onnx"))
        return quantize_int8(fp32, out, calib_x, op_types=INT8_OPS)
    if variant == "tflite-fp32":
        try:
            from export import tflite
        except ImportError as exc:
            raise ExportError(f"TFLite export is unavailable here ({exc})") from None
        return tflite.convert_fp32(module, shape, out)
    raise ExportError(f"dlib-resnet is offered as {', '.join(OFFERED)}, not {variant}")


# -- parity -------------------------------------------------------------------------------------------------------
@dataclass
class Evidence:
    """dlib's chips and descriptors for the parity faces, and the device's own crops of the same photos."""

    rels: list[str]
    dlib_chips_bgr: np.ndarray
    dlib_descriptors: np.ndarray
    device_crops: np.ndarray


def gather_evidence(images_dir: Path, faces: list[FacePair], template: np.ndarray, finder: DlibFaces) -> Evidence:
    encoder = finder.dlib.face_recognition_model_v1(str(package_model(DAT_FILE)))
    tpl = AlignmentTemplate((CHIP_SIZE, CHIP_SIZE), tuple((float(x), float(y)) for x, y in template))
    chips, descriptors, crops = [], [], []
    for f in faces:
        image = load_bgr(Path(images_dir) / f.rel)
        chip = finder.chip(image, f.dlib)
        descriptors.append(np.asarray(encoder.compute_face_descriptor(chip), np.float64))
        chips.append(chip[:, :, ::-1])  # the device's embedder takes BGR
        crops.append(align(image, f.yunet, tpl))
    return Evidence([f.rel for f in faces], np.stack(chips), np.stack(descriptors), np.stack(crops))


def parity_report(embedder: Embedder, ev: Evidence, variant: str) -> dict[str, Any]:
    """Our file on dlib's chips against dlib's descriptors, raw and as the device compares them (unit vectors).

    Both comparisons use the network's single-pass output: the manifest's test-time flip is a use of the
    model, not part of the conversion, and dlib's descriptor has no flip to compare with.
    """
    raw = _raw(embedder, ev.dlib_chips_bgr)
    same_chips = embedding_parity(l2_normalise(ev.dlib_descriptors), l2_normalise(raw))
    device = _cosines(ev.dlib_descriptors, _raw(embedder, ev.device_crops))
    return {"reference": "dlib.face_recognition_model_v1 (dlib-bin) on dlib's own 150×150 chips",
            "variant": variant, **same_chips,
            "raw_max_abs_diff": float(np.abs(raw - ev.dlib_descriptors).max()),
            "raw_descriptor_norm": round(float(np.linalg.norm(ev.dlib_descriptors, axis=1).mean()), 4),
            "alignment": {"what": "dlib's descriptor of its own chip vs ours of the device's YuNet-aligned crop",
                          "mean_cosine": float(device.mean()), "p5_cosine": float(np.percentile(device, 5)),
                          "min_cosine": float(device.min())},
            "crop_images": ev.rels}


def _raw(embedder: Embedder, crops: np.ndarray) -> np.ndarray:
    out = embedder.runtime.run({embedder.runtime.input_names[0]: to_input(crops, embedder.manifest)})[0]
    return out.reshape(len(crops), -1).astype(np.float64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (l2_normalise(np.asarray(a, np.float64)) * l2_normalise(np.asarray(b, np.float64))).sum(axis=1)


# -- the recipe ---------------------------------------------------------------------------------------------------
def default_calibration_pairs(images: Path) -> Path | None:
    p = images.parent / "pairsDevTrain.txt"
    return p if p.is_file() else None


def export(out: Path, variants: tuple[str, ...] = OFFERED, images: Path | None = None, parity_images: int = 100,
           template_images: int = 1000, calibrate: bool = True, calibrate_pairs: Path | None = None,
           far: float = 1e-3, fpir: float = 0.01, registry: Registry | None = None,
           calib_images: int = 200) -> list[tuple[Path, bool]]:
    """Build the chosen variants into `out`; returns (bundle folder, parity passed) for each.

    Thresholds are calibrated on `calibrate_pairs` (default: pairsDevTrain.txt beside the images) unless
    `calibrate` is false: once for the fp32 variants (the same scores to ~1e-6), once for int8. The int8
    variant is calibrated on `calib_images` device crops of photos View 2 does not name, and checked against
    onnx-fp32 on View 1 both ways (export.int8_ranges.view1_choice; onnx-fp32 is built for that when not asked).
    """
    from edge.eval.calibrate import calibrate as calibrate_thresholds

    registry = registry or Registry()
    images = Path(images) if images else data_dir() / "lfw" / "images"
    calibrate_pairs = Path(calibrate_pairs) if calibrate_pairs else default_calibration_pairs(images)
    if calibrate and calibrate_pairs is None:
        raise ExportError(f"no pairsDevTrain.txt beside {images}: name a View-1 pairs file (--calibrate-pairs)")
    if calibrate and calibrate_pairs is not None and calibrate_pairs.name == "pairs.txt":
        raise ExportError("pairs.txt is LFW View 2, the test set: calibrate on View 1 (pairsDevTrain.txt)")
    dat = package_model(DAT_FILE)
    module = load_module(dat)
    finder = DlibFaces(registry)
    # Template and parity faces come from photos LFW View 2 does not name, so the View-2 benchmark stays clean.
    view2 = images.parent / "pairs.txt"
    named = images_named_by([view2] if view2.is_file() else [])
    rels = [r for r in list_images(images) if r not in named]
    rels = [rels[int(k)] for k in np.random.default_rng(0).permutation(len(rels))]
    fit_faces = finder.collect(images, rels[: max(template_images * 2, template_images + 200)], template_images)
    template, fit = fit_template(fit_faces)
    used = {f.rel for f in fit_faces}
    parity_faces = finder.collect(images, [r for r in rels if r not in used], parity_images)
    if len(parity_faces) < parity_images:
        raise ExportError(f"only {len(parity_faces)} parity faces found under {images}")
    evidence = gather_evidence(images, parity_faces, template, finder)
    calib_x = None
    if "onnx-int8" in variants:
        tpl = AlignmentTemplate((CHIP_SIZE, CHIP_SIZE), tuple((float(x), float(y)) for x, y in template))
        skip = named | {f.rel for f in parity_faces}
        calib, _ = heldout_face_crops(images, tpl, calib_images, skip=skip, seed=1, registry=registry)
        calib_x = to_input(calib, Manifest.from_dict(stage_check_manifest(module, template, dat)))
        if "onnx-fp32" not in variants:  # the int8 check's reference; built, measured, not written
            variants = ("onnx-fp32", *variants)
            unwritten = {"onnx-fp32"}
        else:
            unwritten = set()
    else:
        unwritten = set()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        built = []
        for variant in variants:
            manifest = base_manifest(module, template, dat, variant)
            manifest["extra"] = {"alignment_fit": fit, "dlib": {"distance_threshold": 0.6, "chip_padding": CHIP_PADDING,
                                                                "descriptor": "Euclidean, unnormalised"},
                                 "flip_average": FLIP_PROVENANCE}
            suffix = ".onnx" if variant.startswith("onnx") else ".tflite"
            target = work / f"{manifest['name']}{suffix}"
            built.append(Built(variant, manifest, build_variant(variant, module, target, calib_x)))
        staged = stage_all(work / "models", built)
        thresholds: dict[str, dict[str, Any]] = {}
        if calibrate and calibrate_pairs is not None:
            # Once per precision: the fp32 variants give the same scores to ~1e-6; int8 its own.
            for first in {precision(b.variant): b for b in reversed(built)}.values():
                thresholds[precision(first.variant)] = calibrate_thresholds(
                    first.manifest["name"], images, calibrate_pairs, far, registry=staged, fpir=fpir)
                thresholds[precision(first.variant)]["_on"] = first.variant  # type: ignore[assignment]
        targets = {}
        for b in built:
            b.parity = parity_report(Embedder(*staged.open(b.manifest["name"])), evidence, b.variant)
            b.parity["template_images"] = fit["faces"]
            targets[b.variant] = dict(EMBED_TARGETS[precision(b.variant)])
            if b.variant == "onnx-int8":
                b.parity["calibration_images"] = calib_images
                b.parity["view1"] = view1_choice(variant_name(NAME, "onnx-fp32"), b.manifest["name"], images,
                                                 staged, [images.parent / f for f in VIEW1_FILES])
                targets[b.variant]["view1.delta_pp"] = INT8_MAX_LOSS_PP
            found = dict(thresholds.get(precision(b.variant), {}))
            on = found.pop("_on", None)
            if found:
                command = (f"facegate export dlib-resnet --images {images} --calibrate-pairs {calibrate_pairs} "
                           f"--far {far} --fpir {fpir}")
                b.manifest["thresholds"] = {
                    k: {**v, "provenance": {**v["provenance"], "command": command, "calibrated_on": on}}
                    for k, v in found.items()}
        return finish(out, [b for b in built if b.variant not in unwritten], targets)
