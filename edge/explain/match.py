"""One decision explained: occlusion maps of both faces of a 1:1 pair, or of a probe against a stored identity.

For a web page: build a `MatchExplainer` once (it holds the models), then
`explainer.pair(explainer.view(image_a), explainer.view(image_b))` with BGR arrays in, and `.png()` (bytes) or
`.to_dict()` (the grids) of the returned `MatchExplanation` out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge.errors import FacegateError, NoFaceError
from edge.explain import draw
from edge.explain.occlusion import CENTRAL_MARGIN, DEFAULT_FILL, FaceView, Occluder, OcclusionMap, central_box
from edge.match.base import accept
from edge.match.fusion import Fusion
from edge.models.manifest import Manifest
from edge.pipeline import FacePipeline
from edge.vision.detect import select_face

# `--model fused`: the built-in fusion's members (SFace and dlib's ResNet), scored as the decisions score them.
FUSED = "fused"
TOP_CELLS = 3


def embedder_names(model: str) -> tuple[str, ...]:
    """'fused' → both embedders; 'a+b' → a and b; '' → the manifests' default embedder; else the one name. The
    first is the display frame."""
    if not model:
        from edge.models.registry import Registry

        return (Registry().default_embedder(),)
    if model == FUSED:
        from edge.match.fusion import Fusion
        from edge.models.registry import Registry

        return Fusion(Registry().manifest(FUSED)).members
    names = tuple(n for n in model.split("+") if n)
    if not names:
        raise FacegateError(f"no embedder named in {model!r}")
    return names


@dataclass
class Side:
    label: str
    crop: np.ndarray | None  # the display crop (BGR), None when nothing of this side was kept
    map: OcclusionMap | None  # None when this side was not occluded
    note: str = ""
    occluder: Occluder | None = field(default=None, repr=False)  # to score other masks of this face


@dataclass
class MatchExplanation:
    model: str
    score: float
    threshold: float | None
    threshold_kind: str
    sides: list[Side]
    central: tuple[float, float, float, float]  # the eyes–nose–mouth box, display-crop pixels
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def match(self) -> bool | None:
        return None if self.threshold is None else accept(self.score, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "score": round(self.score, 6), "threshold": self.threshold,
                "threshold_kind": self.threshold_kind, "match": self.match,
                "central_box_xyxy": [round(v, 2) for v in self.central],
                "sides": [{"label": s.label, "note": s.note,
                           "map": s.map.to_dict(TOP_CELLS) if s.map is not None else None} for s in self.sides],
                **self.extra}

    def figure(self) -> np.ndarray:
        return match_figure(self)

    def png(self) -> bytes:
        return draw.png(self.figure())


class MatchExplainer:
    """The device's own detection, alignment and embedders, and the occlusion settings."""

    def __init__(self, pipeline: FacePipeline, patch: int = 16, stride: int = 8, batch: int = 64,
                 fill: str = DEFAULT_FILL, progress: Callable[[Iterable[Any], str], Iterable[Any]] | None = None,
                 margin: float = CENTRAL_MARGIN, fusion: Fusion | None = None, templates: str = "mean") -> None:
        self.pipeline = pipeline
        self.templates = templates  # decision.templates: how a stored identity's photos make its score
        # With a fusion, occlusion drops and thresholds are those of the fused z-score the door decides on;
        # without one, several embedders are scored by the mean of their cosines (no calibrated threshold).
        self.fusion = fusion
        self.margin = margin  # of the central box drawn (and measured by the bench), in eye distances
        self.embedders = pipeline.embedders
        self.patch, self.stride, self.batch, self.fill = patch, stride, batch, fill
        self.progress = progress
        display = self.embedders[0].manifest.alignment
        assert display is not None
        self.display = display

    @property
    def model(self) -> str:
        if self.fusion is not None:
            return self.fusion.manifest.name
        return "+".join(e.manifest.name for e in self.embedders)

    @property
    def threshold_manifest(self) -> Manifest | None:
        """Whose thresholds apply: the fusion's, the single embedder's, or none (a mean of cosines)."""
        if self.fusion is not None:
            return self.fusion.manifest
        return self.embedders[0].manifest if len(self.embedders) == 1 else None

    def score(self, probe: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> np.ndarray:
        """(N,) scores of probe rows against the reference's rows, reduced over the reference's photos as the
        decisions reduce them (`templates`: their mean, or the best one)."""
        if self.fusion is None:
            per = np.mean([probe[e] @ reference[e].T for e in reference], axis=0)  # (N, T)
        else:
            cos = np.stack([probe[m] @ reference[m].T for m in self.fusion.members], axis=-1)  # (N, T, members)
            per = self.fusion.combine(cos)
        return per.mean(axis=1) if self.templates == "mean" else per.max(axis=1)

    def view(self, image: np.ndarray, policy: str = "largest") -> FaceView:
        face = select_face(self.pipeline.detect(image), image.shape, policy)
        return FaceView(image, np.asarray(face.landmarks, np.float64))

    def embed(self, view: FaceView) -> dict[str, np.ndarray]:
        """{embedder: (1, D)} of the face, unoccluded."""
        return {e.manifest.name: e.embed(view.crop(e.manifest.alignment)[None])  # type: ignore[arg-type]
                for e in self.embedders}

    def occluder(self, view: FaceView, reference: dict[str, np.ndarray]) -> Occluder:
        return Occluder(view, self.embedders, reference, fill=self.fill, patch=self.patch,
                        batch=self.batch, score=self.score)

    def _map(self, occluder: Occluder, label: str) -> OcclusionMap:
        prog = (lambda it: self.progress(it, label)) if self.progress else None
        return occluder.map(self.patch, self.stride, progress=prog)

    def verify_threshold(self) -> tuple[float | None, str]:
        m = self.threshold_manifest
        if m is None:
            return None, f"none: the mean cosine of {self.model} has no calibrated threshold"
        return m.threshold("verify").value, "verify (1:1)"

    def pair(self, a: FaceView, b: FaceView, labels: tuple[str, str] = ("A", "B"),
             threshold: tuple[float | None, str] | None = None) -> MatchExplanation:
        """Both faces occluded in turn, each scored against the other one whole."""
        ea, eb = self.embed(a), self.embed(b)
        occ_a, occ_b = self.occluder(a, eb), self.occluder(b, ea)
        map_a, map_b = self._map(occ_a, f"occluding {labels[0]}"), self._map(occ_b, f"occluding {labels[1]}")
        value, kind = threshold or self.verify_threshold()
        return MatchExplanation(self.model, map_a.score, value, kind,
                                [Side(labels[0], occ_a.crop, map_a, occluder=occ_a),
                                 Side(labels[1], occ_b.crop, map_b, occluder=occ_b)],
                                central_box(self.display, self.margin))

    def probe_only(self, probe: FaceView, templates: dict[str, np.ndarray], label: str, reference_label: str,
                   threshold: tuple[float | None, str], note: str) -> MatchExplanation:
        """The probe occluded against stored templates ({embedder: (T, D)}); the other side has no picture."""
        occ = self.occluder(probe, templates)
        m = self._map(occ, f"occluding {label}")
        return MatchExplanation(self.model, m.score, threshold[0], threshold[1],
                                [Side(label, occ.crop, m, occluder=occ), Side(reference_label, None, None, note)],
                                central_box(self.display, self.margin))

    def best_view(self, probe: FaceView, kept: list[FaceView]) -> FaceView:
        """The kept face that scores highest against the probe: the one that made the decision."""
        p = self.embed(probe)
        scores = [float(self.score(p, self.embed(v))[0]) for v in kept]
        return kept[int(np.argmax(scores))]

    def kept_view(self, image: np.ndarray, landmarks: np.ndarray | None) -> FaceView:
        """A kept crop as enrolment saw it: its stored landmarks, or a fresh detection when it has none."""
        if landmarks is not None:
            return FaceView(image, np.asarray(landmarks, np.float64))
        return self.view(image, "largest")


def explain_stored(explainer: MatchExplainer, store: Any, name: str, probe: FaceView, fpir: float,
                   probe_label: str = "probe") -> MatchExplanation:
    """A probe against stored identity `name`, at the 1:N threshold `identify` applies to this gallery.

    Uses the identity's kept crops when there are any (both faces get a map, against the kept crop that
    scores best); otherwise the probe alone is occluded against the identity's templates.
    """
    from edge.enroll import read_face_crop
    from edge.match.thresholds import identify_threshold as threshold_for
    from edge.reembed import kept_crops

    ident = store.identity(name)
    if ident is None:
        raise FacegateError(f"unknown identity {name!r}")
    names = [e.manifest.name for e in explainer.embedders]
    manifest = explainer.threshold_manifest
    if manifest is not None:
        k = len({who for who, _, _ in store.templates(names[0])})  # the gallery's identities, as identify sizes it
        value, _ = threshold_for(manifest, max(1, k), fpir)
        threshold: tuple[float | None, str] = (round(value, 6), f"identify (1:N, {k} identities, FPIR {fpir:g})")
    else:
        threshold = (None, f"none: the mean cosine of {explainer.model} has no calibrated threshold")
    kept: list[FaceView] = []
    try:
        for data in kept_crops(store, name, list(ident.templates)):
            try:
                kept.append(explainer.kept_view(*read_face_crop(data)))
            except NoFaceError:
                continue
    except FacegateError:
        kept = []  # crops were not kept: the probe side alone
    reference_label = f"{name} (stored)"
    if kept:
        out = explainer.pair(probe, explainer.best_view(probe, kept), (probe_label, f"{name} (kept crop)"),
                             threshold)
        out.extra["reference"] = "kept crop"
        return out
    templates = {}
    for e in names:
        vecs = [v for _, _, v in store.templates(e, name)]
        if not vecs:
            raise FacegateError(f"identity {name!r} has no {e} template; re-enrol it or run 'facegate store "
                                f"reembed --embedder {e}'")
        templates[e] = np.stack(vecs)
    if len({len(v) for v in templates.values()}) != 1:
        raise FacegateError(f"identity {name!r} has different numbers of templates per embedder "
                            f"({ {e: len(v) for e, v in templates.items()} }): re-enrol it with both")
    out = explainer.probe_only(probe, templates, probe_label, reference_label, threshold,
                               "no face crop kept: templates only")
    out.extra["reference"] = "templates"
    return out


# -- the picture ---------------------------------------------------------------------------------------------
def match_figure(ex: MatchExplanation) -> np.ndarray:
    """Both aligned crops with their heat (shared colour scale), top cells numbered, the central box dotted,
    and the score beside the threshold."""
    crops = [s.crop for s in ex.sides if s.crop is not None]
    h, w = crops[0].shape[:2]
    scale = max(1, round(draw.PANEL_SIDE / max(h, w)))
    ph, pw = h * scale, w * scale
    maps = [s.map for s in ex.sides if s.map is not None]
    vmax = max((float(m.drops.max()) for m in maps), default=0.0)
    vmax = vmax if vmax > 1e-6 else 1.0
    margin, top, bottom = 16, 34, 96
    canvas = np.full((top + ph + bottom, margin + len(ex.sides) * (pw + margin), 3), draw.PAPER, np.uint8)
    for k, side in enumerate(ex.sides):
        x = margin + k * (pw + margin)
        draw.text(canvas, side.label[:48], x, 22, 0.5, bold=True)
        if side.crop is None:
            cv2.rectangle(canvas, (x, top), (x + pw - 1, top + ph - 1), (200, 200, 200), 1)
            draw.text(canvas, side.note or "no picture", x + 10, top + ph // 2, 0.45)
            continue
        panel = draw.overlay(side.crop, side.map.pixels() if side.map else None, vmax, scale)
        draw.rectangle(panel, ex.central, scale, (255, 255, 255), 1)
        if side.map is not None:
            p = side.map.grid.patch
            for n, (i, j) in enumerate(side.map.top_cells(TOP_CELLS), 1):
                y0, x0 = side.map.grid.ys[i], side.map.grid.xs[j]
                draw.rectangle(panel, (x0, y0, x0 + p, y0 + p), scale, (80, 255, 80), 2)
                draw.text(panel, str(n), int((x0 + 2) * scale), int((y0 + p) * scale) - 6, 0.6, (80, 255, 80), True)
        canvas[top:top + ph, x:x + pw] = panel
        if side.note:
            draw.text(canvas, side.note[:52], x, top + ph + 16, 0.42)
    y = top + ph + 36
    verdict = {True: "MATCH", False: "NO MATCH", None: "no decision"}[ex.match]
    thr = f"{ex.threshold:.4f}" if ex.threshold is not None else "n/a"
    draw.text(canvas, f"{ex.model}: score {ex.score:.4f}, threshold {thr} -> {verdict}", margin, y, 0.55, bold=True)
    draw.text(canvas, f"threshold: {ex.threshold_kind}"[:90], margin, y + 20, 0.42)
    bar_w = min(240, canvas.shape[1] - 2 * margin - 140)
    canvas[y + 32:y + 44, margin:margin + bar_w] = draw.colour_bar(bar_w)
    grid = maps[0].grid if maps else None
    what = (f"drop of the score, {grid.patch} px {'blurred' if maps[0].fill == 'blur' else 'grey'} patch, "
            f"stride {grid.stride}") if grid else ""
    draw.text(canvas, f"0 .. {vmax:.3f}  {what}", margin + bar_w + 8, y + 43, 0.42)
    return canvas
