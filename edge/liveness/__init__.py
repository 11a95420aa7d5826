"""Liveness checks: the protocol (base.py) and how the daemon and the CLI find the installed one.

A liveness model is a registry manifest with task "liveness" (a bundle in `<model dir>/<name>/`, e.g. from
`facegate models install minifasnet`). `resolve` is the one place a configuration ("auto" or a name) becomes
a check: the daemon (edge/daemon.py resolve_liveness), `facegate liveness`, the benchmarks and
`calibrate liveness` all call it, so they all run the same nets at the same thresholds.

The code that runs a model is the module named by the manifest's `extra.module`, else
`edge.liveness.<name>` ("-" as "_"), else `edge.liveness.<name up to its first "-">` (so minifasnet-v2 and
minifasnet-v1se share edge/liveness/minifasnet.py); it provides `create(registry, manifest, threads) ->
LivenessCheck`. A configuration may instead name any factory as `package.module:attribute` (a class or
function taking no arguments), for checks that are not registry models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edge.errors import FacegateError, ModelError
from edge.liveness.base import LivenessCheck, LivenessResult

if TYPE_CHECKING:
    from edge.models.registry import Registry

__all__ = ["INSTALL_HINT", "LivenessCheck", "LivenessResult", "installed", "load", "resolve"]

INSTALL_HINT = ("install one with `facegate models install minifasnet` (MiniFASNetV2 + V1SE, fused; on a site "
                "without internet add `--file PATH` for each published .pth), which puts bundles into "
                "{model_dir}/minifasnet*/; or set liveness.model to a 'package.module:Class' implementing "
                "edge.liveness.base.LivenessCheck; or use profile = \"kiosk\", which runs without liveness")


def installed(registry: Registry) -> list[str]:
    """Names of the liveness models installed: bundles whose manifest says task "liveness".

    Whether their files are intact is checked when one is loaded, which refuses a missing or altered file
    by name: a damaged model is an error, not a model that quietly is not there.
    """
    names = []
    for name in registry.names():
        try:
            if registry.manifest(name).task == "liveness":
                names.append(name)
        except FacegateError:
            continue  # an unreadable manifest; `facegate models verify` reports why
    return names


def resolve(registry: Registry, spec: str = "auto", threads: int = 1) -> LivenessCheck:
    """The liveness check a configuration names: `spec` "auto" or a model name / `package.module:attribute`.

    "auto" takes the fused MiniFASNet bundle (`minifasnet`); without it (an install older than the fusion),
    the installed MiniFASNet members fused the same way; else the first liveness model by name. A member
    whose file is missing or fails its hash raises, naming it.
    """
    if spec != "auto":
        return load(spec, registry, threads)
    from edge.liveness.minifasnet import FUSED_NAME, fuse_installed, is_member

    names = installed(registry)
    if not names:
        raise ModelError("no liveness model is installed: " + INSTALL_HINT.format(model_dir=registry.model_dir))
    if FUSED_NAME in names:
        return load(FUSED_NAME, registry, threads)
    if any(is_member(n) for n in names):
        return fuse_installed(registry, threads)
    return load(names[0], registry, threads)


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
