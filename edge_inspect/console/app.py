"""The console's web application: one page (templates/index.html + static/, no build step), a JSON API
and a server-sent event stream of the live line.

Reading needs no login (the line view is a board on the wall); acknowledging alarms and labelling REVIEW
parts need a logged-in user and are audited; the audit trail is for engineers.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time, and
their dependencies are functions local to `create_app`, which a string annotation could not name.
"""

import asyncio
import dataclasses
import datetime as dt
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from edge_inspect.console import views
from edge_inspect.console.auth import COOKIE, SESSION_S, Authenticator
from edge_inspect.console.feed import LineFeed
from edge_inspect.console.hub import Hub
from edge_inspect.console.settings import ConsoleSettings
from edge_inspect.console.store import ConsoleStore
from edge_inspect.console.users import User
from edge_inspect.logs import log_event
from edge_inspect.sinks.record_store import RecordStoreError

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# An SSE comment this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0


class Login(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class Acknowledge(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=500)
    note: str | None = Field(None, max_length=500)


class LabelRequest(BaseModel):
    label: Literal["OK", "NG"]
    note: str | None = Field(None, max_length=500)


def create_app(settings: ConsoleSettings, on_feed_failure: Any = None) -> FastAPI:
    """The application; its lifespan runs the feed thread. `on_feed_failure(exc)` is told if the feed
    dies (the CLI then stops the server)."""
    hub = Hub()
    auth = Authenticator(settings.users_file, settings.proxy_user_header)
    feed = LineFeed(settings, hub, on_feed_failure or (lambda exc: None))
    templates = Jinja2Templates(directory=HERE / "templates")
    if not auth.can_log_in and not settings.proxy_user_header:
        log_event(
            log,
            logging.WARNING,
            "console_read_only",
            why="no users: nobody can acknowledge alarms or label parts; give --users FILE "
            "(edge-inspect console add-user) or --proxy-user-header",
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.attach(asyncio.get_running_loop())
        feed.start()
        try:
            yield
        finally:
            feed.stop.set()
            hub.close()
            feed.join(timeout=5)

    app = FastAPI(title="EdgeInspect console", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.hub, app.state.feed = hub, feed
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def current_user(request: Request) -> User | None:
        return auth.identify(request.headers, request.cookies.get(COOKIE))

    def logged_in(user: Annotated[User | None, Depends(current_user)]) -> User:
        if user is None:
            raise HTTPException(401, "log in first: only logged-in users acknowledge alarms or label parts")
        return user

    def engineer(user: Annotated[User, Depends(logged_in)]) -> User:
        if not user.is_engineer:
            raise HTTPException(403, "only engineers see the audit trail")
        return user

    def console_store() -> ConsoleStore:
        return ConsoleStore(settings.state_path)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> Response:
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "line": settings.line,
                "camera_timeout_s": settings.camera_timeout_s,
                "can_log_in": auth.can_log_in,
                "proxy": bool(settings.proxy_user_header),
            },
        )

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        if not feed.is_alive():
            raise HTTPException(503, "the console's feed of the record store has stopped; see its log")
        return {"feed": "running", "clients": hub.subscribers, "dropped_clients": hub.dropped}

    @app.post("/api/login")
    def login(body: Login, request: Request, response: Response) -> dict[str, Any]:
        token = auth.log_in(body.name, body.password)
        if token is None:
            log_event(log, logging.WARNING, "console_login_refused", name=body.name, client=_client(request))
            raise HTTPException(401, "wrong name or password")
        response.set_cookie(COOKIE, token, max_age=SESSION_S, httponly=True, samesite="strict")
        user = auth.identify({}, token)
        assert user is not None
        with console_store() as store:
            store.audit(user.name, user.role, "login", _client(request), {})
        return {"name": user.name, "role": user.role}

    @app.post("/api/logout")
    def logout(request: Request, response: Response) -> dict[str, Any]:
        auth.log_out(request.cookies.get(COOKIE))
        response.delete_cookie(COOKIE)
        return {}

    @app.get("/api/me")
    def me(user: Annotated[User | None, Depends(current_user)]) -> dict[str, Any]:
        return {"user": None if user is None else {"name": user.name, "role": user.role}}

    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        subscriber, retained = hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n\n"
                for message in retained:
                    yield message
                while True:
                    try:
                        message = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if message is None:  # dropped for being slow, or shutting down
                        return
                    yield message
            finally:
                hub.unsubscribe(subscriber)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/api/alarms")
    def alarms(
        unacknowledged: bool = False, limit: Annotated[int, Query(ge=1, le=1000)] = 200
    ) -> dict[str, Any]:
        with console_store() as store:
            return {
                "alarms": store.alarms(limit, unacknowledged),
                "unacknowledged": store.count_unacknowledged(),
            }

    @app.post("/api/alarms/ack")
    def acknowledge(body: Acknowledge, user: Annotated[User, Depends(logged_in)]) -> dict[str, Any]:
        note = (body.note or "").strip() or None
        with console_store() as store:
            done = store.acknowledge(body.ids, user.name, user.role, note)
            unacknowledged = store.count_unacknowledged()
        event = {
            "ids": done,
            "by": user.name,
            "t_ns": time.time_ns(),
            "note": note,
            "unacknowledged": unacknowledged,
        }
        if done:
            hub.publish("ack", event)
        return event

    @app.get("/api/review")
    def review() -> dict[str, Any]:
        return {"parts": views.review_queue(settings.db_path)}

    @app.post("/api/review/{result_id}/label")
    def label(
        result_id: str, body: LabelRequest, user: Annotated[User, Depends(logged_in)]
    ) -> dict[str, Any]:
        from edge_inspect.training.labelling import label_result

        note = (body.note or "").strip() or None
        try:
            outcome = label_result(settings.db_path, result_id, body.label, user.name, note)
        except RecordStoreError as exc:
            raise HTTPException(404, str(exc)) from None
        with console_store() as store:
            store.audit(
                user.name,
                user.role,
                "label",
                result_id,
                {"label": body.label, "note": note, "action": outcome["action"]},
            )
        event = {"result_id": result_id, "label": body.label, "by": user.name, "t_ns": time.time_ns()}
        hub.publish("label", event)
        return outcome

    @app.get("/api/shift")
    def shift(shift: str | None = None, date: dt.date | None = None) -> dict[str, Any]:
        shifts = settings.shifts
        try:
            if shift is None or date is None:
                window = views.current_window(shifts, dt.datetime.now(dt.timezone.utc))
            else:
                window = views.window_of(shifts, shift, date)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        view = views.shift_view(settings.db_path, window, settings.line)
        return view | {
            "shifts": views.shift_names(shifts),
            "shift": window.shift,
            "date": window.date.isoformat(),
        }

    @app.get("/api/parts")
    def parts(
        part_id: Annotated[str | None, Query(max_length=128)] = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> dict[str, Any]:
        zone = ZoneInfo(settings.shifts.timezone)
        try:
            found = views.part_lookup(settings.db_path, part_id or None, _ns(since, zone), _ns(until, zone))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"results": found}

    @app.get("/api/audit")
    def audit(user: Annotated[User, Depends(engineer)]) -> dict[str, Any]:
        with console_store() as store:
            return {"audit": store.audit_trail()}

    @app.get("/images/{result_id}")
    def image(result_id: str) -> FileResponse:
        path = views.image_file(settings.db_path, settings.image_dir, result_id)
        if path is None:
            raise HTTPException(
                404, f"no archived image for {result_id!r} (OK parts are archived only when sampled)"
            )
        # A result's image never changes: browsers may keep it.
        return FileResponse(
            path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"}
        )

    @app.get("/images/{result_id}/heat")
    def heat(result_id: str) -> Response:
        overlay = views.heat_overlay(settings.db_path, settings.image_dir, result_id)
        if overlay is None:
            raise HTTPException(
                404, f"no heat map for {result_id!r} (only examined parts of map models have one)"
            )
        return Response(
            overlay, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"}
        )

    return app


def _ns(moment: dt.datetime | None, zone: ZoneInfo) -> int | None:
    """A time from the page (local to the line when it has no zone) as epoch nanoseconds."""
    if moment is None:
        return None
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)
    return int(aware.timestamp()) * 10**9 + aware.microsecond * 1000


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def serve(settings: ConsoleSettings, announce: Any = None) -> int:
    """Run the console until stopped (SIGINT/SIGTERM); 0, or 3 when its feed failed. The socket is bound
    here, before the server starts, so `announce(url)` can say where it is (port 0 picks a free one)."""
    import uvicorn

    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_failure(exc: BaseException) -> None:
        failures.append(exc)
        if server is not None:
            server.should_exit = True

    family = socket.AF_INET6 if ":" in settings.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.address, settings.port))
    sock.listen(128)
    bound = dataclasses.replace(settings, port=sock.getsockname()[1])
    app = create_app(bound, stop_on_failure)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    if announce is not None:
        announce(bound.url)
    server.run(sockets=[sock])
    return 3 if failures else 0
