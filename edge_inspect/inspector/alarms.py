"""Line alarms: the recipe's rules over the stream of recorded results, per camera.

Two kinds (inspector/recipe.py AlarmRule): `window`, N results with a verdict within M minutes, and
`consecutive`, K such results in a row. Windows run on capture time, not on the clock of the machine
evaluating them, so a replay or a slow record stage raises the same alarms as the line did, and tests
need no sleeping. After an alarm its window (or streak) starts empty: the next alarm needs N (K) fresh
results, so a line that stays bad raises one alarm per N parts, not one per part.

`AlarmEvaluator.observe` is called by the record stage for each result once it is recorded; it logs
each alarm (`line_alarm`) and counts it in edgeinspect_line_alarms_total{camera,rule}.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edge_inspect.bus.contracts import InspectionResult
from edge_inspect.inspector.recipe import AlarmRule
from edge_inspect.logs import log_event

if TYPE_CHECKING:
    from edge_inspect.sinks.metrics import InspectorMetrics

log = logging.getLogger(__name__)

NS_PER_MINUTE = 60 * 10**9


@dataclass(frozen=True)
class Alarm:
    """One line alarm. `id` is stable (rule, camera and the last result), so a receiver can deduplicate."""

    id: str
    camera: str
    rule: str
    kind: str
    verdict: str
    count: int
    first_result_id: str
    last_result_id: str
    t_first_ns: int
    t_last_ns: int
    recipe: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlarmEvaluator:
    """Pure but for its logging and counting: results in, alarms out. `rules` is called per result, so
    a reloaded recipe's alarms apply from the next result; a rule that changed starts from nothing.
    One thread calls `observe` (the record stage)."""

    def __init__(
        self,
        rules: Callable[[], Sequence[AlarmRule]],
        metrics: InspectorMetrics | None = None,
    ) -> None:
        self._rules = rules
        self._metrics = metrics
        # Per (rule, camera): the matching results in its window or streak, (t_capture_ns, result_id).
        self._hits: dict[tuple[AlarmRule, str], deque[tuple[int, str]]] = {}
        self._active: tuple[AlarmRule, ...] = ()

    def observe(self, result: InspectionResult) -> list[Alarm]:
        rules = tuple(self._rules())
        if rules != self._active:
            self._forget_all_but(rules)
        alarms = []
        for rule in rules:
            alarm = self._advance(rule, result)
            if alarm is not None:
                alarms.append(alarm)
                self._report(alarm)
        return alarms

    def _advance(self, rule: AlarmRule, result: InspectionResult) -> Alarm | None:
        hits = self._hits.setdefault((rule, result.camera_id), deque())
        if result.verdict != rule.verdict:
            if rule.kind == "consecutive":
                hits.clear()
            return None
        hits.append((result.t_capture_ns, result.result_id))
        if rule.kind == "window" and rule.minutes is not None:
            oldest = result.t_capture_ns - int(rule.minutes * NS_PER_MINUTE)
            while hits and hits[0][0] <= oldest:
                hits.popleft()
        if len(hits) < rule.count:
            return None
        (t_first, first), (t_last, last) = hits[0], hits[-1]
        hits.clear()
        return Alarm(
            id=f"{rule.name}:{last}",
            camera=result.camera_id,
            rule=rule.name,
            kind=rule.kind,
            verdict=rule.verdict,
            count=rule.count,
            first_result_id=first,
            last_result_id=last,
            t_first_ns=t_first,
            t_last_ns=t_last,
            recipe=result.recipe,
        )

    def _forget_all_but(self, rules: tuple[AlarmRule, ...]) -> None:
        keep = set(rules)
        self._hits = {key: hits for key, hits in self._hits.items() if key[0] in keep}
        self._active = rules

    def _report(self, alarm: Alarm) -> None:
        log_event(log, logging.WARNING, "line_alarm", **alarm.to_dict())
        if self._metrics is not None:
            self._metrics.line_alarm(alarm.camera, alarm.rule)
