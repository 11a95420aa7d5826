"""Liveness checks: the protocol (base.py) and how the daemon finds an installed one.

A liveness model is a registry manifest with task "liveness" (a bundle in `<model dir>/<name>/`, e.g. from
`facegate models install minifasnet-v2`). The code that runs it is the module named by the manifest's
`extra.module`, else `edge.liveness.<name>` ("-" as "_"), else `edge.liveness.<name up to its first "-">`
(so minifasnet-v2 and minifasnet-v1se share edge/liveness/minifasnet.py); it provides
`create(registry, manifest, threads) -> LivenessCheck`. A configuration may instead name any
factory as `package.module:attribute` (a class or function taking no arguments), for checks that are not
registry models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edge.errors import FacegateError, ModelError
from edge.liveness.base import LivenessCheck, LivenessResult

if TYPE_CHECKING:
    from edge.models.registry import Registry

__all__ = ["INSTALL_HINT", "LivenessCheck", "LivenessResult", "installed", "load"]

INSTALL_HINT = ("install one with `facegate models install minifasnet-v2` (converting the published weights "
                "needs the [export] extra: pip install 'facegate[export]'), which puts a bundle into "
                "{model_dir}/minifasnet-v2/; or set liveness.model to a 'package.module:Class' implementing "
                "edge.liveness.base.LivenessCheck; or use profile = \"kiosk\", which runs without liveness")


def installed(registry: Registry) -> list[str]:
    """Names of liveness models whose manifest is known and whose file is present."""
    names = []
    for name in registry.names():
        try:
            m = registry.manifest(name)
            if m.task == "liveness" and registry.source_path(m).is_file():
                names.append(name)
        except FacegateError:
            continue  # a broken bundle is not "installed"; `facegate models verify` reports why
    return names


def load(spec: str, registry: Registry, threads: int = 1) -> LivenessCheck:
    """The liveness check `spec` names: a registry model name, or `package.module:attribute`."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise FacegateError(f"liveness.model {spec!r}: cannot import it ({exc})") from None
        check = factory()
    else:
        m = registry.manifest(spec)
        if m.task != "liveness":
            raise ModelError(f"liveness.model {spec!r} is a {m.task!r} model, not a liveness model")
        registry.verify(m)
        explicit = m.extra.get("module")
        candidates = [str(explicit)] if explicit else list(dict.fromkeys(
            (f"edge.liveness.{m.name.replace('-', '_')}", f"edge.liveness.{m.name.split('-')[0]}")))
        module = None
        for module_name in candidates:
            try:
                module = importlib.import_module(module_name)
                break
            except ModuleNotFoundError as exc:
                if exc.name != module_name:  # the module exists but something it imports does not
                    raise ModelError(f"liveness model {spec!r}: {module_name} needs {exc.name!r}") from None
        if module is None:
            raise ModelError(f"liveness model {spec!r}: no code for it ({' or '.join(candidates)})")
        check = module.create(registry, m, threads)
    if not isinstance(check, LivenessCheck):
        raise FacegateError(f"liveness.model {spec!r} does not implement LivenessCheck (name, check())")
    return check
