"""What the admin page works with: the store, the models, the scorer, the decision log, the accounts and,
inside `facegate run`, the daemon itself.

Two ways to build them:
- `Services.standalone(cfg)` for `facegate web`: its own store connection, pipeline and scorer, built from the
  daemon's configuration (the same models, thresholds and store as the door).
- `Services.of_daemon(daemon)` inside `facegate run`: the daemon's own store, pipeline, scorer and decision
  log, used under the engine's lock (as an MQTT enrolment is), so an enrolment from the page reaches the next
  frame's decision and the door switch reaches the running daemon.
Explanations (occlusion maps, seconds of work) run on a pipeline of their own, built on first use, so they
never hold the door's models.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.decision_log import DecisionLog, open_decision_log
from edge.errors import FacegateError
from edge.models.registry import Registry
from edge.store.db import Store
from edge.web.accounts import Accounts, open_accounts


@dataclass
class Services:
    cfg: Config
    store: Store
    registry: Registry
    pipeline: Any  # FacePipeline
    scorer: Any  # edge.match.Scorer over the store's gallery
    lock: AbstractContextManager[Any]  # held while the models or the gallery are used
    accounts: Accounts
    decision_log: DecisionLog | None
    daemon: Any = None  # the running Daemon when mounted in `facegate run`
    owned: bool = True  # close the store, the log and the scorer's gallery on close
    _explainer: Any = field(default=None, repr=False)
    _explain_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def standalone(cls, cfg: Config, accounts: Accounts | None = None) -> Services:
        from edge.daemon import store_location
        from edge.match.factory import make_scorer
        from edge.pipeline import FacePipeline

        registry = Registry(Path(cfg.models.model_dir) if cfg.models.model_dir else None)
        path, key = store_location(cfg)
        # The page enrols people, so like `facegate enroll` it may start the store.
        store = Store(path, key=key, keep_crops=cfg.web.keep_crops, create=True)
        log = scorer = None
        try:
            log = open_decision_log(cfg.web, key)
            if log is not None:
                log.forget_absent(i.name for i in store.identities())
                log.purge_crops(cfg.web.keep_unknown_crops_h)
            scorer = make_scorer(registry, cfg.models.embedder, cfg.models.verifier, store, cfg.decision.fpir,
                                 cfg.models.fusion, cfg.decision.templates)
            pipeline = FacePipeline(registry, detector=cfg.models.detector, embedder=cfg.models.embedder,
                                    threads=cfg.models.threads, min_face_px=cfg.models.min_face_px,
                                    extra_embedders=scorer.embedders)
            return cls(cfg, store, registry, pipeline, scorer, threading.RLock(),
                           accounts or open_accounts(cfg.web), log)
        except BaseException:
            if scorer is not None and scorer.gallery is not None:
                scorer.gallery.close()
            if log is not None:
                log.close()
            store.close()
            raise

    @classmethod
    def of_daemon(cls, daemon: Any) -> Services:
        cfg = daemon.cfg
        daemon.store.keep_crops = daemon.store.keep_crops or cfg.web.keep_crops
        return cls(cfg, daemon.store, daemon.engine.pipeline.registry, daemon.pipeline, daemon.scorer,
                       daemon.engine.lock, open_accounts(cfg.web), daemon.decision_log, daemon=daemon, owned=False)

    def close(self) -> None:
        self.accounts.close()
        if not self.owned:
            return
        if self.scorer is not None and self.scorer.gallery is not None:
            self.scorer.gallery.close()
        if self.decision_log is not None:
            self.decision_log.close()
        self.store.close()

    # -- work -----------------------------------------------------------------------------------------------
    def enroller(self) -> Any:
        from edge.enroll import Enroller

        return Enroller(self.store, self.pipeline, policy="single", scorer=self.scorer, lock=self.lock)

    def delete(self, name: str, account: str) -> bool:
        """A real deletion (templates, crops, the bytes out of the files), audited with the account's name; the
        decision log forgets the person too (a running daemon also drops them before its next frame)."""
        ok = self.store.delete(name, command=f"web: delete by {account}")
        if ok and self.decision_log is not None:
            self.decision_log.forget(name)
        return ok

    def identify(self, image: Any) -> tuple[Any, Any, Any]:
        """(face, aligned crop, Result) of the largest face of an image against the gallery."""
        with self.lock:
            face, probe = self.pipeline.probe(image, "largest")
            crop = self.pipeline.crops(image, [face])[0]
            result = self.scorer.identify(probe, top=3)
        return face, crop, result

    def explain(self, crop_png: bytes, name: str, label: str) -> Any:
        """The occlusion map of a kept face crop against stored identity `name` (edge/explain), on a pipeline
        of its own: the door's models are never held for the seconds this takes."""
        from edge.enroll import read_face_crop
        from edge.explain.match import MatchExplainer, explain_stored
        from edge.pipeline import FacePipeline

        with self._explain_lock:
            if self._explainer is None:
                m = self.cfg.models
                pipe = FacePipeline(self.registry, detector=m.detector, embedder=self.pipeline.embedder.manifest.name,
                                    threads=m.threads, min_face_px=m.min_face_px)
                self._explainer = MatchExplainer(pipe)
            ex = self._explainer
            probe = ex.kept_view(*read_face_crop(crop_png))
            return explain_stored(ex, self.store, name, probe, self.cfg.decision.fpir, probe_label=label)

    # -- the door -------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The daemon's health: its own when mounted in it, else its /healthz on the configured port."""
        if self.daemon is not None:
            return {"source": "this process", **self.daemon.health()}
        if not self.cfg.health.enabled:
            return {"source": "none", "error": "health.enabled = false: the daemon's health is not served"}
        host, _, port = self.cfg.health.listen.rpartition(":")
        host = host.strip("[]")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                return {"source": url, **json.loads(r.read())}
        except urllib.error.HTTPError as exc:  # 503: running but unhealthy, with the same body
            try:
                return {"source": url, **json.loads(exc.read())}
            except ValueError:
                return {"source": url, "error": f"HTTP {exc.code}"}
        except (OSError, ValueError) as exc:
            return {"source": url, "error": f"no daemon answered ({getattr(exc, 'reason', exc)})"}

    def models(self) -> list[dict[str, Any]]:
        """The configured models with the hash and source of each manifest."""
        m = self.cfg.models
        # The embedders the pipeline runs (models.embedder "" is the manifests' default; a fusion adds members).
        embedders = [e.manifest.name for e in self.pipeline.embedders]
        names = [m.detector, *embedders, *([m.verifier] if m.verifier else []), *([m.fusion] if m.fusion else [])]
        out = []
        for name in dict.fromkeys(names):
            try:
                man = self.registry.manifest(name)
                out.append({"name": name, "task": man.task, "sha256": man.sha256, "runtime": man.runtime,
                            "source": ", ".join(f"{k} {v}" for k, v in man.source.items())})
            except FacegateError as exc:
                out.append({"name": name, "error": str(exc)})
        return out

    def liveness(self) -> dict[str, Any]:
        """Which liveness model the door uses and whether it is calibrated on this site's faces."""
        from edge.liveness import installed
        from edge.liveness.minifasnet import FUSED_NAME

        if self.cfg.profile == "kiosk":
            return {"mode": "kiosk profile: no liveness check"}
        if self.daemon is not None and self.daemon.liveness is None:
            return {"mode": "none"}
        names = installed(self.registry)
        if self.daemon is not None and self.daemon.liveness_mode not in (*names, FUSED_NAME):
            # A check loaded by "module:Class" (liveness.model): it has no manifest, so no threshold to show.
            return {"mode": f"{self.daemon.liveness_mode}: a check without a manifest, so no threshold or "
                            f"calibration to show"}
        if not names:
            return {"mode": "not installed", "error": "facegate models install minifasnet [--file …]"}
        name = FUSED_NAME if FUSED_NAME in names else names[0]
        live = self.registry.manifest(name).thresholds.get("live")
        prov = live.provenance if live is not None else {}
        return {"mode": self.daemon.liveness_mode if self.daemon is not None else name, "model": name,
                "threshold": None if live is None else live.value,
                "calibrated": prov.get("target_bpcer") is not None, "date": prov.get("date"),
                "target_bpcer": prov.get("target_bpcer")}

    def face_unlock(self) -> bool | None:
        """The daemon's face-unlock switch (None: the page does not run inside the daemon, or the daemon's
        profile has no door)."""
        return None if self.daemon is None else self.daemon.face_unlock

    def set_face_unlock(self, enabled: bool, account: str) -> bool:
        if self.daemon is None:
            raise FacegateError("the face-unlock switch reaches the daemon only when the page runs inside it: "
                                "set [web] enabled = true and open the page that `facegate run` serves")
        return bool(self.daemon.set_face_unlock(enabled, source=f"admin page, {account}"))
