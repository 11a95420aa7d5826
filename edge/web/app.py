"""The admin page's routes: server-rendered pages (Jinja2), plain HTML forms, no JavaScript.

Every page but the log-in needs a session (a GET without one is sent to the log-in page, any other request is
refused with 401); every form carries a CSRF token (the session's, or for the log-in form a double-submit
cookie) and a POST without the right one is refused with 403. Responses carry a strict Content-Security-Policy
(no scripts at all), no-store caching, and a Server-Timing header with the server's own time (`facegate bench
web` reads it). Errors show a message, never a traceback: input errors say what was wrong, anything else
says "internal error" and is logged.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hmac
import logging
import math
import secrets
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from edge.config import parse_window
from edge.decision_log import OUTCOMES
from edge.errors import FacegateError
from edge.web.accounts import LoginLimiter, Session
from edge.web.asgi import Wrapper
from edge.web.hosts import HostGuard
from edge.web.jobs import Jobs
from edge.web.services import Services
from edge.web.uploads import MB, UploadError, check_person_name, files_of, read_form, save_folder, text_of, unpack_zip

log = logging.getLogger("facegate.web")
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "facegate_session"
LOGIN_COOKIE = "facegate_login"
PAGE = 50
MAX_PHOTOS = 20  # per enrolment from the page (a bulk upload takes more)
PENDING_S = 900.0  # a preview's photos wait this long for "enrol"
MAX_PENDING = 32
CSP = ("default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")


class Redirect(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclasses.dataclass
class Pending:
    """Photos judged for an enrolment, waiting for the administrator's "enrol" (nothing stored yet)."""

    account: str
    name: str
    display_name: str
    judged: list[Any]  # edge.enroll.Judged, before the guard
    force: bool
    created: float = dataclasses.field(default_factory=time.monotonic)


# -- formatting -------------------------------------------------------------------------------------------------
def _when(ts: float | None) -> str:
    return "—" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}"


def _reason(text: str) -> str:
    """An enrolment refusal as the page words it: the CLI's "--force" is the page's checkbox."""
    return text.replace("use --force", "tick “skip the checks”")


def png_uri(image: np.ndarray | None, max_side: int = 0) -> str:
    """A BGR image as a data: URI (PNG), scaled down to `max_side` if given."""
    if image is None:
        return ""
    h, w = image.shape[:2]
    if max_side and max(h, w) > max_side:
        f = max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", image)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def _mask_userinfo(source: str) -> str:
    """A camera URL without its password (rtsp://user:secret@host → rtsp://user:***@host)."""
    scheme, sep, rest = source.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return source
    userinfo, _, host = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _row_id(raw: str) -> int | None:
    """A whole number from a query string, or None: ASCII digits only ("²".isdigit() is true, int("²") fails)
    and at most 18 of them (SQLite's integers end near 9.2e18)."""
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None


def _page_number(request: Request) -> int:
    page = _row_id(request.query_params.get("page", "1"))
    return max(1, min(page, 10**6)) if page is not None else 1


def _safe_next(url: str | None) -> str:
    return url if url and url.startswith("/") and not url.startswith("//") and "\\" not in url else "/people"


# -- the app ----------------------------------------------------------------------------------------------------
def create_app(services: Services, limiter: LoginLimiter | None = None) -> Starlette:
    cfg = services.cfg.web
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(when=_when, num=_num, urlq=lambda s: quote(str(s), safe=""), reason=_reason)
    limiter = limiter or LoginLimiter(cfg.login_attempts, cfg.login_window_s)
    jobs = Jobs()
    pending: OrderedDict[str, Pending] = OrderedDict()
    explained: OrderedDict[tuple[int, str], tuple[str, dict[str, Any]]] = OrderedDict()
    primary = services.pipeline.manifest.name

    # -- helpers -----------------------------------------------------------------------------------------------
    def session_of(request: Request) -> Session | None:
        return services.accounts.session(request.cookies.get(SESSION_COOKIE))

    def need(request: Request) -> Session:
        s = session_of(request)
        if s is None:
            if request.method == "GET":
                raise Redirect("/login?" + urlencode({"next": request.url.path + (
                    "?" + request.url.query if request.url.query else "")}))
            raise Refused(401, "log in first")
        return s

    def same_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin and origin != "null" and origin.split("://", 1)[-1] != request.headers.get("host"):
            raise Refused(403, "a form from another site was refused")

    def check_csrf(request: Request, s: Session, token: Any) -> None:
        same_origin(request)
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), s.csrf.encode()):
            raise Refused(403, "the form's security token is missing or wrong (reload the page and try again)")

    async def posted(request: Request, limit: int = 64 * 1024, what: str = "the form") -> tuple[Session, Any]:
        s = need(request)  # before reading a byte of the body
        form = await read_form(request, limit, what)
        check_csrf(request, s, form.get("csrf"))
        return s, form

    def render(request: Request, template: str, s: Session | None, status: int = 200, /, **ctx: Any) -> Response:
        return templates.TemplateResponse(request, template, {"session": s, "csrf": s.csrf if s else "", **ctx},
                                          status_code=status)

    def png(data: bytes) -> Response:
        return Response(data, media_type="image/png")

    def keep_pending(p: Pending) -> str:
        now = time.monotonic()
        for k in [k for k, v in pending.items() if now - v.created > PENDING_S]:
            del pending[k]
        while len(pending) >= MAX_PENDING:
            pending.popitem(last=False)
        token = secrets.token_urlsafe(16)
        pending[token] = p
        return token

    # -- log-in ------------------------------------------------------------------------------------------------
    def login_page(request: Request, status: int = 200, error: str = "") -> Response:
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
        resp = render(request, "login.html", None, status, login_csrf=token, error=error,
                      next=_safe_next(request.query_params.get("next")),
                      no_accounts=not services.accounts.names())
        resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=cfg.cookie_secure,
                        path="/login")
        return resp

    async def login_get(request: Request) -> Response:
        if session_of(request) is not None:
            return RedirectResponse("/people", 303)
        return login_page(request)

    async def login_post(request: Request) -> Response:
        form = await read_form(request, 64 * 1024, "the form")
        same_origin(request)
        cookie, token = request.cookies.get(LOGIN_COOKIE), form.get("csrf")
        if not cookie or not isinstance(token, str) or not hmac.compare_digest(cookie.encode(), token.encode()):
            raise Refused(403, "the log-in form's security token is missing or wrong (reload the page)")
        name, password = text_of(form, "account", 64), form.get("password")
        password = password if isinstance(password, str) else ""
        keys = (f"account:{name}", f"address:{request.client.host if request.client else '?'}")
        wait, stamp = limiter.begin(*keys)  # counted before the password is checked (see LoginLimiter.begin)
        if wait > 0:
            return login_page(request, 429, f"too many failed log-ins: try again in {math.ceil(wait / 60)} minute(s)")
        if not name or not await run_in_threadpool(services.accounts.verify, name, password):
            return login_page(request, 401, "wrong account name or password")
        limiter.succeeded(keys[0], stamp, *keys[1:])
        token = services.accounts.login(name)
        resp = RedirectResponse(_safe_next(text_of(form, "next", 500)), 303)
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=cfg.cookie_secure, path="/")
        resp.delete_cookie(LOGIN_COOKIE, path="/login")
        log.info("web: %s logged in", name)
        return resp

    async def logout(request: Request) -> Response:
        await posted(request)
        services.accounts.logout(request.cookies.get(SESSION_COOKIE))
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # -- people ------------------------------------------------------------------------------------------------
    def people_page(q: str, page: int) -> dict[str, Any]:
        total, rows = services.store.people(q, (page - 1) * PAGE, PAGE, embedder=primary)
        seen = services.decision_log.last_seen(r["name"] for r in rows) if services.decision_log else {}
        for r in rows:
            r["last_seen"] = seen.get(r["name"])
        return {"q": q, "page": page, "pages": max(1, math.ceil(total / PAGE)), "total": total, "rows": rows}

    async def people(request: Request) -> Response:
        s = need(request)
        q = request.query_params.get("q", "").strip()[:200]
        data = await run_in_threadpool(people_page, q, _page_number(request))
        return render(request, "people.html", s, nav="people", **data)

    async def api_people(request: Request) -> Response:
        if session_of(request) is None:
            return JSONResponse({"error": "log in first"}, 401)
        q = request.query_params.get("q", "").strip()[:200]
        data = await run_in_threadpool(people_page, q, _page_number(request))
        return JSONResponse({k: data[k] for k in ("q", "page", "pages", "total")}
                            | {"people": [{k: r[k] for k in ("name", "display_name", "photos", "templates",
                                                             "created", "last_seen")} for r in data["rows"]]})

    def person_context(name: str) -> dict[str, Any]:
        ident = services.store.identity(name)
        if ident is None:
            raise Refused(404, f"no enrolled identity is named {name!r}")
        audit_total, audit = services.store.audit_page(0, 20, name)
        decisions = services.decision_log.query(person=name, limit=10)[1] if services.decision_log else []
        meta = ident.metadata
        return {"ident": ident, "templates": services.store.template_rows(name), "audit": audit,
                "audit_total": audit_total, "decisions": decisions,
                "valid_from": meta.get("valid_from", ""), "valid_until": meta.get("valid_until", ""),
                "windows": "\n".join(meta.get("access", [])) if isinstance(meta.get("access"), list) else "",
                "config_windows": services.cfg.access.windows.get(name), "nav": "people",
                "keep_crops": services.store.keep_crops}

    async def person(request: Request) -> Response:
        s = need(request)
        name = request.query_params.get("name", "")
        ctx = await run_in_threadpool(person_context, name)
        notice = {"enrolled": "photos enrolled", "saved": "saved", "assigned": "the face was enrolled"}.get(
            request.query_params.get("done", ""), "")
        return render(request, "person.html", s, notice=notice, **ctx)

    async def person_crop(request: Request) -> Response:
        need(request)
        tid = _row_id(request.query_params.get("id", ""))
        data = services.store.crop(request.query_params.get("name", ""), tid) if tid is not None else None
        if data is None:
            raise Refused(404, "no such photo")
        return png(data)

    def validity(form: Any) -> tuple[dict[str, Any], str]:
        changes: dict[str, Any] = {}
        for key in ("valid_from", "valid_until"):
            raw = text_of(form, key, 40)
            if raw:
                try:
                    raw = dt.date.fromisoformat(raw).isoformat()
                except ValueError:
                    raise UploadError(f"{key.replace('_', ' ')}: {raw!r} is not a date (YYYY-MM-DD)") from None
            changes[key] = raw or None
        if changes["valid_from"] and changes["valid_until"] and changes["valid_from"] > changes["valid_until"]:
            raise UploadError("the validity period ends before it starts")
        lines = [w.strip() for w in text_of(form, "windows", 4000).splitlines() if w.strip()]
        for w in lines:
            try:
                parse_window(w)
            except ValueError as exc:
                raise UploadError(f"time window: {exc}") from None
        changes["access"] = lines or None
        display = text_of(form, "display_name", 400)
        if display:
            check_person_name(display, "display name")
        return changes, display

    async def person_validity(request: Request) -> Response:
        s, form = await posted(request)
        name = text_of(form, "name", 400)
        try:
            changes, display = validity(form)
            await run_in_threadpool(services.store.update_metadata, name, changes, f"web: update by {s.account}",
                                    display)
        except FacegateError as exc:
            ctx = await run_in_threadpool(person_context, name)
            return render(request, "person.html", s, 400, error=str(exc), **ctx)
        return RedirectResponse(f"/person?name={quote(name, safe='')}&done=saved", 303)

    async def person_delete_get(request: Request) -> Response:
        s = need(request)
        name = request.query_params.get("name", "")
        ident = services.store.identity(name)
        if ident is None:
            raise Refused(404, f"no enrolled identity is named {name!r}")
        return render(request, "person_delete.html", s, nav="people", ident=ident)

    async def person_delete_post(request: Request) -> Response:
        s, form = await posted(request)
        name, typed = text_of(form, "name", 400), text_of(form, "confirm", 400)
        ident = services.store.identity(name)
        if ident is None:
            raise Refused(404, f"no enrolled identity is named {name!r}")
        if typed != name:
            return render(request, "person_delete.html", s, 400, nav="people", ident=ident,
                          error="type the name exactly to confirm the deletion: nothing was deleted")
        await run_in_threadpool(services.delete, name, s.account)
        log.info("web: %s deleted an identity", s.account)
        return RedirectResponse(f"/audit?deleted={quote(name, safe='')}", 303)

    # -- enrolment ---------------------------------------------------------------------------------------------
    def enrol_form(request: Request, s: Session, status: int = 200, **ctx: Any) -> Response:
        return render(request, "enrol.html", s, status, nav="enrol", max_upload_mb=cfg.max_upload_mb,
                      max_bulk_mb=cfg.max_bulk_mb, max_photos=MAX_PHOTOS, running=jobs.running(), **ctx)

    async def enrol_get(request: Request) -> Response:
        s = need(request)
        return enrol_form(request, s, name=request.query_params.get("name", ""))

    def judge_uploads(files: list[tuple[str, bytes]]) -> list[tuple[Any, str]]:
        from edge.enroll import Judged
        from edge.imageio import decode_bgr

        enroller = services.enroller()
        out = []
        for fname, data in files:
            try:
                image = decode_bgr(data, fname)
            except FacegateError as exc:
                msg = str(exc)
                msg = msg.split(": ", 1)[1] if msg.startswith(fname + ": ") else msg
                out.append((Judged(fname, reasons=[f"unreadable image: {msg}"]), ""))
                continue
            out.append((enroller.judge(fname, image=image), png_uri(image, 160)))
        return out

    def guarded(p: Pending) -> list[Any]:
        """Fresh copies of the judged photos with the guard applied (the gallery may have changed)."""
        copies = [dataclasses.replace(j, reasons=list(j.reasons)) for j in p.judged]
        services.enroller().guard(p.name, copies, p.force)
        return copies

    async def enrol_check(request: Request) -> Response:
        s = need(request)
        form = None
        try:
            s, form = await posted(request, int(cfg.max_upload_mb * MB), "the upload")
            name = check_person_name(text_of(form, "name", 400))
            display = text_of(form, "display_name", 400)
            if display:
                check_person_name(display, "display name")
            add = form.get("add") == "1"
            photos = files_of(form, "photos")
            if not photos:
                raise UploadError("choose at least one photo")
            if len(photos) > MAX_PHOTOS:
                raise UploadError(f"{len(photos)} photos: at most {MAX_PHOTOS} per enrolment (use the bulk upload "
                                  "for more)")
            enrolled = services.store.identity(name) is not None
            if add and not enrolled:
                raise UploadError(f"no enrolled identity is named {name!r} (it may have been deleted)")
            files = [((f.filename or "photo").rsplit("/", 1)[-1][:120], await f.read()) for f in photos]
        except UploadError as exc:
            return enrol_form(request, s, exc.status, error=str(exc),
                              name=text_of(form, "name", 400) if form is not None else "")
        assert form is not None
        judged = await run_in_threadpool(judge_uploads, files)
        p = Pending(s.account, name, display, [j for j, _ in judged], form.get("force") == "1")
        shown = await run_in_threadpool(guarded, p)
        token = keep_pending(p)
        items = [{"j": j, "thumb": thumb, "crop": png_uri(j.aligned)} for j, (_, thumb) in zip(shown, judged,
                                                                                                strict=True)]
        return render(request, "enrol_preview.html", s, nav="enrol", name=name, display_name=display, items=items,
                      token=token, accepted=sum(j.accepted for j in shown), enrolled=enrolled, force=p.force)

    async def enrol_commit(request: Request) -> Response:
        s, form = await posted(request)
        p = pending.pop(text_of(form, "token", 100), None)
        if p is None or p.account != s.account or time.monotonic() - p.created > PENDING_S:
            raise Refused(410, "this preview has expired or was already used: upload the photos again")

        def commit() -> tuple[list[int], list[Any]]:
            judged = guarded(p)
            ids = services.enroller().commit(p.name, judged, command=f"web: enrol by {s.account}",
                                             display_name=p.display_name or None)
            return ids, judged

        ids, judged = await run_in_threadpool(commit)
        if not ids:
            reasons = sorted({_reason(r) for j in judged for r in j.reasons})
            raise Refused(409, "nothing was stored: " + ("; ".join(reasons) or "no photo was accepted"))
        return RedirectResponse(f"/person?name={quote(p.name, safe='')}&done=enrolled", 303)

    async def enrol_bulk(request: Request) -> Response:
        from edge.enroll import enroll_dir

        s = need(request)
        limit = int(cfg.max_bulk_mb * MB)
        scratch = Path(tempfile.mkdtemp(prefix="facegate-web-bulk-"))
        try:
            s, form = await posted(request, limit, "the bulk upload")
            force = form.get("force") == "1"
            archives, folder = files_of(form, "archive"), files_of(form, "folder")
            if archives:
                title = archives[0].filename or "archive.zip"
                await archives[0].seek(0)
                n = await run_in_threadpool(unpack_zip, archives[0].file, scratch, limit)
            elif folder:
                title = (folder[0].filename or "folder").split("/", 1)[0]
                n = await save_folder(folder, scratch)
            else:
                raise UploadError("choose a zip file or a folder")
            if n == 0:
                raise UploadError("no images in person folders were found (expected NAME/photo.jpg for each "
                                  "person): nothing was stored")
            job = jobs.start(s.account, title[:120], lambda job: enroll_dir(
                services.enroller(), scratch, force=force, progress=job.progress,
                command=f"web: bulk enrol by {s.account} ({title[:80]})"), scratch)
        except FacegateError as exc:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
            return enrol_form(request, s, getattr(exc, "status", 400), bulk_error=str(exc))
        except BaseException:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return RedirectResponse(f"/jobs/{job.id}", 303)

    async def job_page(request: Request) -> Response:
        s = need(request)
        job = jobs.get(request.path_params["job"], s.account)
        if job is None:
            raise Refused(404, "no such job (finished jobs are kept for an hour)")
        return render(request, "job.html", s, nav="enrol", job=job)

    # -- identify ----------------------------------------------------------------------------------------------
    async def identify(request: Request) -> Response:
        s = need(request)
        if request.method == "GET":
            return render(request, "identify.html", s, nav="identify", max_upload_mb=cfg.max_upload_mb)
        from edge.imageio import decode_bgr

        try:
            s, form = await posted(request, int(cfg.max_upload_mb * MB), "the upload")
            photos = files_of(form, "photo")
            if not photos:
                raise UploadError("choose a photo")
            fname = (photos[0].filename or "photo").rsplit("/", 1)[-1][:120]
            data = await photos[0].read()
            image = await run_in_threadpool(decode_bgr, data, fname)
            _, crop, result = await run_in_threadpool(services.identify, image)
        except FacegateError as exc:
            return render(request, "identify.html", s, getattr(exc, "status", 400), nav="identify",
                          max_upload_mb=cfg.max_upload_mb, error=str(exc))
        return render(request, "identify.html", s, nav="identify", max_upload_mb=cfg.max_upload_mb,
                      result=result, crop=png_uri(crop), photo=png_uri(image, 240), fname=fname)

    # -- decisions ---------------------------------------------------------------------------------------------
    def decisions_context(request: Request) -> dict[str, Any]:
        qp = request.query_params
        filters = {"person": qp.get("person", "").strip()[:200], "door": qp.get("door", "").strip()[:200],
                   "outcome": qp.get("outcome", "") if qp.get("outcome", "") in OUTCOMES else ""}
        page = _page_number(request)
        dlog = services.decision_log
        if dlog is None:
            return {"off": True, "filters": filters, "rows": [], "total": 0, "page": 1, "pages": 1, "doors": []}
        if services.daemon is None:
            dlog.purge_crops(cfg.keep_unknown_crops_h)  # the daemon does this itself when it runs the page
        total, rows = dlog.query(offset=(page - 1) * PAGE, limit=PAGE, **filters)
        return {"off": False, "filters": filters, "rows": rows, "total": total, "page": page,
                "pages": max(1, math.ceil(total / PAGE)), "doors": dlog.doors(), "outcomes": OUTCOMES,
                "keep_h": cfg.keep_unknown_crops_h, "query": urlencode({k: v for k, v in filters.items() if v})}

    async def decisions(request: Request) -> Response:
        s = need(request)
        ctx = await run_in_threadpool(decisions_context, request)
        notice = "assigned" if request.query_params.get("done") == "assigned" else ""
        return render(request, "decisions.html", s, nav="decisions", notice=notice, **ctx)

    def decision_crop_bytes(request_id: str) -> tuple[int, bytes]:
        row = _row_id(request_id)
        if services.decision_log is None or row is None:
            raise Refused(404, "no such decision")
        data = services.decision_log.crop(row)
        if data is None:
            raise Refused(404, "no face crop is kept for this decision (crops are kept only for unknown faces, "
                               f"for {cfg.keep_unknown_crops_h:g} hours)")
        return row, data

    async def decision_crop(request: Request) -> Response:
        need(request)
        return png(decision_crop_bytes(request.query_params.get("id", ""))[1])

    async def decision_assign(request: Request) -> Response:
        from edge.enroll import read_face_crop

        s, form = await posted(request)
        row_id, data = decision_crop_bytes(text_of(form, "id", 20))
        try:
            name = check_person_name(text_of(form, "name", 400))
        except UploadError as exc:
            ctx = await run_in_threadpool(decisions_context, request)
            return render(request, "decisions.html", s, 400, nav="decisions", error=str(exc), **ctx)

        def assign() -> tuple[list[int], Any]:
            enroller = services.enroller()
            image, _ = read_face_crop(data)
            judged = enroller.judge(f"decision {row_id}", image=image)
            enroller.guard(name, [judged], form.get("force") == "1")
            ids = enroller.commit(name, [judged], command=f"web: assign decision {row_id} by {s.account}")
            if ids:
                services.decision_log.assigned(row_id, name)  # type: ignore[union-attr]
            return ids, judged

        ids, judged = await run_in_threadpool(assign)
        if not ids:
            ctx = await run_in_threadpool(decisions_context, request)
            return render(request, "decisions.html", s, 409, nav="decisions", **ctx,
                          error=f"decision {row_id} was not assigned to {name}: "
                          + "; ".join(map(_reason, judged.reasons)))
        return RedirectResponse(f"/person?name={quote(name, safe='')}&done=assigned", 303)

    async def decision_explain(request: Request) -> Response:
        s = need(request)
        row_id, data = decision_crop_bytes(request.query_params.get("id", ""))
        name = request.query_params.get("name", "").strip()
        if services.store.identity(name) is None:
            raise Refused(404, f"no enrolled identity is named {name!r}: choose whom to compare the face with")
        key = (row_id, name)
        if key not in explained:
            ex = await run_in_threadpool(services.explain, data, name, f"decision {row_id}")
            explained[key] = ("data:image/png;base64," + base64.b64encode(ex.png()).decode(), ex.to_dict())
            while len(explained) > 16:
                explained.popitem(last=False)
        uri, summary = explained[key]
        return render(request, "explain.html", s, nav="decisions", row=services.decision_log.get(row_id),  # type: ignore[union-attr]
                      name=name, image=uri, summary=summary)

    # -- the door ----------------------------------------------------------------------------------------------
    def door_context() -> dict[str, Any]:
        c = services.cfg
        return {"health": services.health(), "models": services.models(), "liveness": services.liveness(),
                "face_unlock": services.face_unlock(), "camera": _mask_userinfo(c.camera.source),
                "profile": c.profile, "door_name": c.mqtt.door, "mqtt": c.mqtt.enabled, "web": cfg,
                "in_daemon": services.daemon is not None, "nav": "door"}

    async def door(request: Request) -> Response:
        s = need(request)
        return render(request, "door.html", s, **await run_in_threadpool(door_context))

    async def door_switch(request: Request) -> Response:
        s, form = await posted(request)
        try:
            services.set_face_unlock(form.get("enabled") == "on", s.account)
        except FacegateError as exc:
            return render(request, "door.html", s, 409, error=str(exc), **await run_in_threadpool(door_context))
        return RedirectResponse("/door", 303)

    # -- audit -------------------------------------------------------------------------------------------------
    async def audit(request: Request) -> Response:
        s = need(request)
        page = _page_number(request)
        name = request.query_params.get("name") or None
        total, rows = await run_in_threadpool(services.store.audit_page, (page - 1) * PAGE, PAGE, name)
        return render(request, "audit.html", s, nav="audit", rows=rows, total=total, page=page, name=name or "",
                      pages=max(1, math.ceil(total / PAGE)), deleted=request.query_params.get("deleted", ""))

    async def home(request: Request) -> Response:
        need(request)
        return RedirectResponse("/people", 303)

    # -- errors ------------------------------------------------------------------------------------------------
    def error_page(request: Request, status: int, message: str) -> Response:
        try:
            s = session_of(request)
        except Exception:  # the accounts file itself may be what failed
            s = None
        return render(request, "error.html", s, status, message=message)

    async def on_redirect(request: Request, exc: Exception) -> Response:
        return RedirectResponse(exc.url if isinstance(exc, Redirect) else "/", 303)

    async def on_refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.message}, exc.status)
        return error_page(request, exc.status, exc.message)

    async def on_input(request: Request, exc: Exception) -> Response:
        return error_page(request, getattr(exc, "status", 400), str(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        return error_page(request, code, {404: "no such page", 405: "not allowed here"}.get(code, "request refused"))

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.error("web: %s %s failed", request.method, request.url.path, exc_info=exc)
        return error_page(request, 500, "internal error: the administrator can find the details in the log")

    routes = [
        Route("/", home), Route("/login", login_get, methods=["GET"]), Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/people", people), Route("/api/people", api_people),
        Route("/person", person), Route("/person/crop", person_crop),
        Route("/person/validity", person_validity, methods=["POST"]),
        Route("/person/delete", person_delete_get, methods=["GET"]),
        Route("/person/delete", person_delete_post, methods=["POST"]),
        Route("/enrol", enrol_get), Route("/enrol/check", enrol_check, methods=["POST"]),
        Route("/enrol/commit", enrol_commit, methods=["POST"]), Route("/enrol/bulk", enrol_bulk, methods=["POST"]),
        Route("/jobs/{job}", job_page),
        Route("/identify", identify, methods=["GET", "POST"]),
        Route("/decisions", decisions), Route("/decisions/crop", decision_crop),
        Route("/decisions/assign", decision_assign, methods=["POST"]),
        Route("/decisions/explain", decision_explain),
        Route("/door", door), Route("/door/face-unlock", door_switch, methods=["POST"]),
        Route("/audit", audit),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={
        Redirect: on_redirect, Refused: on_refused, FacegateError: on_input, HTTPException: on_http,
        Exception: on_crash})
    app.state.services = services
    app.state.limiter = limiter
    app.state.jobs = jobs
    # The Host check sits inside the headers, so a refused request still carries them.
    return SecurityHeaders(HostGuard(app, cfg.allowed_hosts))  # type: ignore[return-value]


class SecurityHeaders(Wrapper):
    """Headers on every response: no scripts, no framing, no caching of pages that show people, and the time
    the server spent (Server-Timing, for `facegate bench web`)."""

    async def http(self, scope: Any, receive: Any, send: Any) -> None:
        start = time.perf_counter()
        static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                h["Content-Security-Policy"] = CSP
                h["X-Content-Type-Options"] = "nosniff"
                h["X-Frame-Options"] = "DENY"
                h["Referrer-Policy"] = "no-referrer"
                h["Cache-Control"] = "max-age=3600" if static else "no-store"
                h["Server-Timing"] = f"app;dur={(time.perf_counter() - start) * 1e3:.3f}"
            await send(message)

        await self.app(scope, receive, send_with_headers)
