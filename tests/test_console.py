"""The console's core without a browser: users and sessions, the line watch (tiles and alarms), its
store, the event hub's treatment of slow browsers, shift windows, and the feed over a real record store.
The browser tests (test_console_browser.py) drive the whole of it in Chromium."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import stat
import time
from pathlib import Path

import pytest

from edge_inspect.bus.contracts import Defect, InspectionResult, ModelRef, StageTimings
from edge_inspect.console.auth import Authenticator
from edge_inspect.console.feed import LineFeed
from edge_inspect.console.hub import Hub
from edge_inspect.console.line_watch import LineWatch
from edge_inspect.console.settings import ConsoleSettings
from edge_inspect.console.store import ConsoleStore
from edge_inspect.console.users import UsersError, add_user, check_password, load_users
from edge_inspect.console.views import current_window, part_lookup, review_queue, shift_view, window_of
from edge_inspect.inspector.config import ShiftsConfig
from edge_inspect.inspector.recipe import AlarmRule
from edge_inspect.inspector.rules import QualityRules
from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import wait_until

S = 10**9


def result(camera: str, seq: int, verdict: str, t_s: float, part: str | None = None) -> InspectionResult:
    defects = [Defect("crack", 0.9, (4, 5, 6, 7), 42)] if verdict == "NG" else []
    return InspectionResult(
        camera_id=camera,
        seq=seq,
        part_id=part or f"p{seq}",
        station="st",
        t_capture_ns=int(t_s * S),
        verdict=verdict,
        score=0.9 if verdict == "NG" else 0.1,
        threshold=0.5,
        defects=defects,
        model=ModelRef("m", "7", "abc"),
        timings_ms=StageTimings(),
    )


def watch(rules: list[AlarmRule] | None = None, window: int = 4, limit: float = 0.5) -> LineWatch:
    return LineWatch(lambda: rules or [], camera_timeout_s=10, ng_rate_window=window, ng_rate_limit=limit)


# Users and sessions ---------------------------------------------------------------------------------


def test_users_file_holds_argon2_hashes_only_and_checks_passwords(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "anna", "engineer", "correct horse")
    add_user(path, "ben", "operator", "battery staple")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "correct horse" not in path.read_text() and "$argon2id$" in path.read_text()
    users = load_users(path)
    assert check_password(users, "anna", "correct horse").role == "engineer"
    assert check_password(users, "anna", "battery staple") is None
    assert check_password(users, "nobody", "correct horse") is None
    with pytest.raises(UsersError, match="role"):
        add_user(path, "carl", "admin", "long enough")
    with pytest.raises(UsersError, match="8 characters"):
        add_user(path, "carl", "operator", "short")


def test_sessions_and_the_proxy_header(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "anna", "engineer", "correct horse")
    auth = Authenticator(path, None)
    assert auth.log_in("anna", "wrong password") is None
    token = auth.log_in("anna", "correct horse")
    assert auth.identify({}, token).name == "anna"
    assert auth.identify({"x-remote-user": "anna"}, None) is None  # no proxy configured: header ignored
    auth.log_out(token)
    assert auth.identify({}, token) is None

    proxied = Authenticator(path, "X-Remote-User")
    assert proxied.identify({"x-remote-user": "anna"}, None).role == "engineer"
    assert proxied.identify({"x-remote-user": "dora"}, None).role == "operator"
    assert proxied.identify({"x-remote-user": "bad name\n"}, None) is None


def test_a_proxy_header_is_trusted_only_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        ConsoleSettings(workdir=tmp_path, proxy_user_header="X-Remote-User", address="0.0.0.0")
    assert ConsoleSettings(workdir=tmp_path, proxy_user_header="X-Remote-User", address="::1").url.startswith(
        "http://[::1]:"
    )


# The line watch -------------------------------------------------------------------------------------


def test_every_ng_part_is_an_alarm_and_tiles_follow_the_newest_result() -> None:
    line = watch()
    assert line.observe(result("cam-1", 1, "OK", 100), now_ns=100 * S) == []
    (alarm,) = line.observe(result("cam-1", 2, "NG", 100.5), now_ns=int(100.5 * S))
    assert (alarm.kind, alarm.camera, alarm.result_id) == ("ng_part", "cam-1", "cam-1:100500000000:2")
    assert alarm.detail["defects"][0] == {"cls": "crack", "score": 0.9, "bbox": [4, 5, 6, 7], "area_px": 42}
    line.observe(result("cam-1", 0, "OK", 99), now_ns=101 * S)  # a late replay does not move the tile back
    (tile,) = line.snapshot(now_ns=101 * S)
    assert tile["last"]["verdict"] == "NG" and tile["online"] is True
    assert tile["fps"] == pytest.approx(3 / 5)  # three results in the last five seconds


def test_a_camera_without_results_for_its_timeout_is_silent_once_then_back() -> None:
    line = watch()
    line.observe(result("cam-1", 1, "OK", 100), now_ns=100 * S)
    assert line.expire(now_ns=109 * S) == []
    (alarm,) = line.expire(now_ns=110 * S)
    assert (alarm.kind, alarm.id, alarm.t_ns) == ("camera_silent", f"silent:cam-1:{100 * S}", 110 * S)
    assert line.snapshot(110 * S)[0]["online"] is False
    assert line.expire(now_ns=120 * S) == []  # one alarm per silence
    line.observe(result("cam-1", 2, "OK", 121), now_ns=121 * S)
    assert line.snapshot(121 * S)[0]["online"] is True


def test_ng_rate_and_recipe_alarms() -> None:
    streak = AlarmRule(name="ng-streak", kind="consecutive", verdict="NG", count=2)
    line = watch([streak], window=4, limit=0.5)
    kinds = [
        [a.kind for a in line.observe(result("cam-1", i, v, 100 + i), now_ns=(100 + i) * S)]
        for i, v in enumerate(["OK", "NG", "OK", "NG", "NG"])
    ]
    # The 4th result completes the window with 2 of 4 NG; the 5th is the second NG in a row.
    assert kinds == [[], ["ng_part"], [], ["ng_part", "ng_rate"], ["ng_part", "line_rule"]]


# The console's store --------------------------------------------------------------------------------


def test_alarms_are_stored_once_and_the_first_acknowledgement_stands(tmp_path: Path) -> None:
    line = watch()
    alarms = line.observe(result("cam-1", 1, "NG", 100), now_ns=100 * S)
    with ConsoleStore(tmp_path / "console.sqlite") as store:
        assert store.add_alarms(alarms, cursor=1) == alarms
        assert store.add_alarms(alarms, cursor=2) == []  # seen again after a restart
        assert store.cursor() == 2
        assert store.acknowledge([alarms[0].id, "no-such"], "anna", "engineer", "checked") == [alarms[0].id]
        assert store.acknowledge([alarms[0].id], "ben", "operator", None) == []
        (listed,) = store.alarms()
        assert listed["ack"]["by"] == "anna" and listed["ack"]["note"] == "checked"
        assert store.count_unacknowledged() == 0
        (entry,) = store.audit_trail()
        assert (entry["who"], entry["action"], entry["target"]) == ("anna", "acknowledge", alarms[0].id)


# The hub: a slow browser is dropped, never waited for -----------------------------------------------


def test_a_browser_that_does_not_read_is_dropped_and_the_others_keep_their_events() -> None:
    async def scenario() -> tuple[int, list[str | None], int]:
        hub = Hub(queue_events=3)
        hub.attach(asyncio.get_running_loop())
        slow, _ = hub.subscribe()
        fast, _ = hub.subscribe()
        received = []
        for i in range(5):
            hub.publish("alarm", {"i": i})
            await asyncio.sleep(0)  # the fan-out runs on the loop
            received.append(await fast.queue.get())
        return hub.dropped, [slow.queue.get_nowait()], len(received)

    dropped, slow_queue, fast_received = asyncio.run(scenario())
    assert dropped == 1 and slow_queue == [None]  # its stream ends; EventSource reconnects
    assert fast_received == 5


# Views ----------------------------------------------------------------------------------------------


def test_shift_windows_with_and_without_a_calendar() -> None:
    plain = ShiftsConfig(timezone="Europe/Berlin")
    window = window_of(plain, "day", dt.date(2026, 12, 1))
    assert (
        window.start.isoformat() == "2026-12-01T00:00:00+01:00"
        and window.end - window.start == dt.timedelta(1)
    )
    shifts = ShiftsConfig(
        timezone="UTC",
        calendar={"early": {"start": "06:00", "end": "14:00"}, "night": {"start": "22:00", "end": "06:00"}},
    )
    at = dt.datetime(2026, 12, 2, 3, 0, tzinfo=dt.timezone.utc)
    running = current_window(shifts, at)
    assert (running.shift, running.date) == ("night", dt.date(2026, 12, 1))
    between = current_window(shifts, dt.datetime(2026, 12, 2, 15, 0, tzinfo=dt.timezone.utc))
    assert (between.shift, between.date) == ("early", dt.date(2026, 12, 2))  # the latest that ended


def test_views_over_a_real_record_store(tmp_path: Path) -> None:
    now_s = time.time()
    with RecordStore(tmp_path / "records.sqlite") as store:
        store.add_results(
            [
                result("cam-1", 1, "OK", now_s - 3, part="A"),
                result("cam-1", 2, "REVIEW", now_s - 2, part="B"),
                result("cam-2", 3, "NG", now_s - 1, part="A"),
                result("cam-2", 4, "REVIEW", now_s, part="C"),
            ],
            with_outbox=False,
        )
        store.add_label("cam-2:" + str(int(now_s * S)) + ":4", "OK", "ben")
    db = tmp_path / "records.sqlite"
    assert [p["part_id"] for p in review_queue(db)] == ["B"]  # C is labelled
    inspections = part_lookup(db, "A", None, None)
    assert [p["verdict"] for p in inspections] == ["NG", "OK"]
    with pytest.raises(ValueError, match="part id or a time range"):
        part_lookup(db, None, None, None)
    view = shift_view(db, current_window(ShiftsConfig(), dt.datetime.now(dt.timezone.utc)), "line-1")
    assert view["report"]["totals"]["verdicts"] == {"OK": 1, "NG": 1, "REVIEW": 2}
    assert sum(p["ng"] for p in view["series"]["cam-2"]) == 1
    assert view["model_in_service"]["version"] == "7"


def test_a_parts_heat_map_is_served_as_an_overlay_transparent_where_the_part_looks_good(
    tmp_path: Path,
) -> None:
    import cv2
    import numpy as np
    from fastapi.testclient import TestClient

    from edge_inspect.console.app import create_app

    image = np.full((60, 80), 90, np.uint8)
    heat = np.zeros((60, 80), np.uint8)
    heat[10:20, 30:50] = 255  # well over the threshold (128) in one region
    workdir = tmp_path / "inspector"
    with RecordStore(workdir / "records.sqlite", workdir / "images") as store:
        mapped, plain = result("cam-1", 1, "REVIEW", time.time()), result("cam-1", 2, "NG", time.time())
        store.add_results(
            [
                dataclasses.replace(mapped, image_path=store.archive_image(mapped, image, heat)),
                dataclasses.replace(plain, image_path=store.archive_image(plain, image)),
            ],
            with_outbox=False,
        )
    client = TestClient(create_app(ConsoleSettings(workdir=workdir)))
    response = client.get(f"/images/{mapped.result_id}/heat")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (60, 80, 4)
    alpha = overlay[:, :, 3]
    assert alpha[15, 40] > 150 and alpha[40, 10] == 0
    assert overlay[15, 40, 2] > overlay[15, 40, 0]  # red where the map is high
    # A part without a heat map (a classifier's, an OK part) says so; the page then shades its regions.
    missing = client.get(f"/images/{plain.result_id}/heat")
    assert missing.status_code == 404 and "no heat map" in missing.json()["detail"]


def unacknowledged(path: Path) -> int:
    with ConsoleStore(path) as store:
        return store.count_unacknowledged()


def test_the_feed_follows_the_record_store_and_the_recipe_and_remembers_its_place(tmp_path: Path) -> None:
    now_s = time.time()
    with RecordStore(tmp_path / "records.sqlite") as store:
        store.add_results([result("cam-1", 1, "NG", now_s)], with_outbox=False)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[[alarms]]\nname = "ng-pair"\nkind = "consecutive"\nverdict = "NG"\ncount = 2\n')
    settings = ConsoleSettings(workdir=tmp_path, rules=QualityRules(recipe=recipe), poll_s=0.02)
    hub = Hub()
    feed = LineFeed(settings, hub, on_failure=pytest.fail)
    feed.start()
    try:
        wait_until(lambda: unacknowledged(settings.state_path) == 1, 5, "the first NG alarm")
        with RecordStore(tmp_path / "records.sqlite") as store:
            store.add_results([result("cam-1", 2, "NG", now_s + 0.1)], with_outbox=False)
        wait_until(
            lambda: unacknowledged(settings.state_path) == 3, 5, "the second NG and the recipe's alarm"
        )
    finally:
        feed.stop.set()
        feed.join(timeout=5)
    with ConsoleStore(settings.state_path) as store:
        assert sorted(a["kind"] for a in store.alarms()) == ["line_rule", "ng_part", "ng_part"]
        assert store.cursor() == 2
