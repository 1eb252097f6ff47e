"""The line as the console shows it, from the recorded results alone: one tile per camera and the alarms.

Pure but for the clock passed in: `observe` takes each recorded result in record order, `expire` is called
periodically; both return the alarms raised. Alarm kinds:

- `ng_part`: every NG part;
- `line_rule`: the recipe's line alarms (inspector/alarms.py, the same evaluator the inspector runs, on
  capture time, so the console raises what the inspector logs);
- `ng_rate`: at least `ng_rate_limit` of a camera's last `ng_rate_window` results NG (then the window
  starts empty, as the recipe's alarms do);
- `camera_silent`: no result from a camera for `camera_timeout_s` (reusing the outputs' CameraWatch).

Every alarm id is stable (derived from the results it is about), so a restarted console that sees the
same results again raises nothing twice (the store keeps the first).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_inspect.bus.contracts import InspectionResult
from edge_inspect.inspector.alarms import AlarmEvaluator
from edge_inspect.inspector.recipe import AlarmRule
from edge_inspect.sinks.result_tail import CameraWatch

FPS_WINDOW_NS = 5 * 10**9


@dataclass(frozen=True)
class ConsoleAlarm:
    """One entry of the alarm list. `result_id` is the part the alarm shows (its image), if any."""

    id: str
    kind: str
    camera: str
    t_ns: int
    title: str
    result_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def result_summary(result: InspectionResult) -> dict[str, Any]:
    """What the page shows of a result: verdict, part, score, defects (class, score, region), model."""
    return {
        "result_id": result.result_id,
        "camera": result.camera_id,
        "station": result.station,
        "part_id": result.part_id,
        "verdict": result.verdict,
        "score": round(result.score, 4),
        "t_capture_ns": result.t_capture_ns,
        "defects": [
            {
                "cls": d.cls,
                "score": round(d.score, 4),
                "bbox": list(d.bbox) if d.bbox else None,
                "area_px": d.area_px,
            }
            for d in result.defects
        ],
        "has_image": bool(result.image_path),
        "model": f"{result.model.name} {result.model.version}",
        "rule": result.rule,
    }


def ng_part_alarm(result: InspectionResult) -> ConsoleAlarm:
    top = result.defects[0] if result.defects else None
    return ConsoleAlarm(
        id=f"ng:{result.result_id}",
        kind="ng_part",
        camera=result.camera_id,
        t_ns=result.t_capture_ns,
        title=f"NG part {result.part_id or '-'}" + (f": {top.cls}" if top else ""),
        result_id=result.result_id,
        detail=result_summary(result),
    )


@dataclass
class CameraTile:
    camera: str
    station: str
    last: dict[str, Any] | None = None
    # The newest result of this camera with an archived image (NG and REVIEW parts, sampled OK parts).
    last_image: dict[str, Any] | None = None
    online: bool = True
    recent_ns: deque[int] = field(default_factory=deque)

    def fps(self, now_ns: int) -> float:
        while self.recent_ns and self.recent_ns[0] <= now_ns - FPS_WINDOW_NS:
            self.recent_ns.popleft()
        return len(self.recent_ns) * 1e9 / FPS_WINDOW_NS

    def to_dict(self, now_ns: int) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "station": self.station,
            "last": self.last,
            "last_image": self.last_image,
            "online": self.online,
            "fps": round(self.fps(now_ns), 1),
        }


class LineWatch:
    def __init__(
        self,
        alarm_rules: Callable[[], Sequence[AlarmRule]],
        camera_timeout_s: float,
        ng_rate_window: int,
        ng_rate_limit: float,
    ) -> None:
        self.tiles: dict[str, CameraTile] = {}
        self._rules = AlarmEvaluator(alarm_rules)
        self._watch = CameraWatch(camera_timeout_s)
        self._timeout_s = camera_timeout_s
        self._rate_window = ng_rate_window
        self._rate_limit = ng_rate_limit
        self._recent: dict[str, deque[tuple[bool, str]]] = {}

    def prime(
        self, last: InspectionResult, last_image: InspectionResult | None, now_ns: int
    ) -> list[ConsoleAlarm]:
        """A camera known from before this console started: its tile, and whether it is silent now."""
        tile = self._tile(last)
        tile.last = result_summary(last)
        tile.last_image = result_summary(last_image) if last_image is not None else None
        self._watch.seen(last.station, last.camera_id, last.t_capture_ns, now_ns)
        return self.expire(now_ns)

    def observe(self, result: InspectionResult, now_ns: int) -> list[ConsoleAlarm]:
        tile = self._tile(result)
        if tile.last is None or result.t_capture_ns >= tile.last["t_capture_ns"]:
            tile.last = result_summary(result)
            if result.image_path:
                tile.last_image = tile.last
        tile.recent_ns.append(result.t_capture_ns)
        self._watch.seen(result.station, result.camera_id, result.t_capture_ns, now_ns)
        tile.online = self._watch.online[(result.station, result.camera_id)]
        alarms = [ng_part_alarm(result)] if result.verdict == "NG" else []
        alarms += [self._rule_alarm(alarm.to_dict()) for alarm in self._rules.observe(result)]
        rate = self._ng_rate(result)
        return alarms + ([rate] if rate is not None else [])

    def expire(self, now_ns: int) -> list[ConsoleAlarm]:
        """Cameras that fell silent since the last call, each as an alarm."""
        alarms = []
        for station, camera in self._watch.expire(now_ns):
            tile = self.tiles[camera]
            tile.online = self._watch.online[(station, camera)]
            if not tile.online:
                last_ns = self._watch.last_ns[(station, camera)]
                alarms.append(
                    ConsoleAlarm(
                        id=f"silent:{camera}:{last_ns}",
                        kind="camera_silent",
                        camera=camera,
                        t_ns=last_ns + int(self._timeout_s * 1e9),
                        title=f"camera {camera} silent: no result for {self._timeout_s:g} s",
                        detail={"last_capture_ns": last_ns, "station": station},
                    )
                )
        return alarms

    def snapshot(self, now_ns: int) -> list[dict[str, Any]]:
        return [self.tiles[camera].to_dict(now_ns) for camera in sorted(self.tiles)]

    def _tile(self, result: InspectionResult) -> CameraTile:
        tile = self.tiles.get(result.camera_id)
        if tile is None:
            tile = self.tiles[result.camera_id] = CameraTile(result.camera_id, result.station)
        return tile

    def _rule_alarm(self, alarm: dict[str, Any]) -> ConsoleAlarm:
        return ConsoleAlarm(
            id=f"rule:{alarm['id']}",
            kind="line_rule",
            camera=alarm["camera"],
            t_ns=alarm["t_last_ns"],
            title=f"line alarm {alarm['rule']}: {alarm['count']} {alarm['verdict']} "
            + ("in a row" if alarm["kind"] == "consecutive" else "within the window"),
            result_id=alarm["last_result_id"],
            detail=alarm,
        )

    def _ng_rate(self, result: InspectionResult) -> ConsoleAlarm | None:
        recent = self._recent.setdefault(result.camera_id, deque(maxlen=self._rate_window))
        recent.append((result.verdict == "NG", result.result_id))
        if len(recent) < self._rate_window:
            return None
        ng = sum(is_ng for is_ng, _ in recent)
        if ng < self._rate_limit * self._rate_window:
            return None
        recent.clear()
        return ConsoleAlarm(
            id=f"ng_rate:{result.result_id}",
            kind="ng_rate",
            camera=result.camera_id,
            t_ns=result.t_capture_ns,
            title=f"NG rate {ng}/{self._rate_window} on {result.camera_id}",
            result_id=result.result_id,
            detail={"ng": ng, "window": self._rate_window, "limit": self._rate_limit},
        )
