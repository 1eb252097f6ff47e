"""Infer stage: prepared batch → model (`infer` on the host, a device runtime on the device path) →
`postprocess` → `rules` (the recipe in force, per camera) → one outcome per frame.

With `[rules] recipe` set, the stage follows the recipe file (inspector/recipe.py RecipeHolder, checked
every few seconds between batches): a changed file takes over from the next batch; a bad one is refused
and the old recipe keeps judging. Every result names the rule that decided it and the recipe's hash.

Any stage's failure still accounts for every frame: a batch whose preprocessing, inference or
postprocessing raised becomes REVIEW results whose defect names the stage (`preprocess_error`, ...),
counted in edgeinspect_stage_errors_total.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_inspect.bus.contracts import Defect, InspectionResult, StageTimings
from edge_inspect.inspector.alarms import AlarmEvaluator
from edge_inspect.inspector.batching import InferenceSlot
from edge_inspect.inspector.model_source import ActiveModel
from edge_inspect.inspector.postprocess import Judgement
from edge_inspect.inspector.recipe import AlarmRule, LoadedRecipe, RecipeHolder, apply_recipe
from edge_inspect.inspector.rules import NORMALISED_THRESHOLD, QualityRules
from edge_inspect.inspector.stages.base import Stage
from edge_inspect.inspector.stages.prepare import PreparedBatch
from edge_inspect.inspector.stages.record import Outcome, RecordStage, image_to_archive
from edge_inspect.logs import log_event

if TYPE_CHECKING:
    from edge_inspect.inspector.device.frame_path import DeviceFramePath
    from edge_inspect.inspector.receive import ReceivedFrame
    from edge_inspect.sinks.metrics import InspectorMetrics

log = logging.getLogger(__name__)

# The model's outputs as host arrays, as far as postprocess reads them.
RunModel = Callable[[ActiveModel, Any], dict[str, Any]]


@dataclass(frozen=True)
class Judged:
    """A batch's judgements and the times they took; `failed_stage` names the stage that raised, if any."""

    judgements: list[Judgement]
    infer_ms: float
    postprocess_ms: float
    failed_stage: str | None = None
    error: str | None = None
    # sha256 of the recipe file the batch was judged under; None: the config's own rules.
    recipe: str | None = None


def review_judgements(stage: str, count: int) -> list[Judgement]:
    """REVIEW for every frame of a batch whose `stage` raised."""
    error = Defect(cls=f"{stage}_error", score=1.0)
    return [
        Judgement(float("nan"), NORMALISED_THRESHOLD, "REVIEW", [error], f"{stage}_error")
        for _ in range(count)
    ]


def under_recipe(
    prepared: PreparedBatch, judgements: list[Judgement], loaded: LoadedRecipe
) -> list[Judgement]:
    """The batch's parts re-decided under the recipe, each for its own camera."""
    thresholds = prepared.active.card.thresholds
    decided = []
    for frame, judgement in zip(prepared.frames, judgements, strict=True):
        verdict, rule = apply_recipe(judgement, frame.header.camera_id, loaded.recipe, thresholds)
        decided.append(dataclasses.replace(judgement, verdict=verdict, rule=rule))
    return decided


def judge(
    prepared: PreparedBatch, run_model: RunModel, rules: QualityRules, recipe: LoadedRecipe | None = None
) -> Judged:
    """Infer, postprocess and apply the rules (the recipe, when one is in force) to a prepared batch;
    never raises."""
    from edge_inspect.inspector.postprocess import postprocess

    active, images = prepared.active, prepared.images
    t1 = t2 = time.perf_counter()
    stage = "preprocess"
    try:
        if prepared.failure is not None:
            raise RuntimeError(prepared.failure)
        stage = "infer"
        outputs = run_model(active, prepared.inputs)
        t2 = time.perf_counter()
        stage = "postprocess"
        hws = [(img.shape[0], img.shape[1]) for img in images]
        judgements = postprocess(outputs, active.card, rules, hws)
        if recipe is not None:
            judgements = under_recipe(prepared, judgements, recipe)
    except Exception as exc:  # any stage's failure must still account for every frame
        if stage == "infer":
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        judgements = review_judgements(stage, len(prepared.frames))
        sha = recipe.sha256 if recipe is not None else None
        return Judged(judgements, (t2 - t1) * 1e3, (t3 - t2) * 1e3, stage, repr(exc), sha)
    t3 = time.perf_counter()
    return Judged(judgements, (t2 - t1) * 1e3, (t3 - t2) * 1e3, recipe=recipe.sha256 if recipe else None)


def stage_timings(
    frame: ReceivedFrame, prepared: PreparedBatch, decode_ms: float, judged: Judged, t_done_ns: int
) -> StageTimings:
    header = frame.header
    return StageTimings(
        transport=max(0.0, (frame.t_received_ns - header.t_capture_ns) / 1e6),
        queue=(prepared.t_batch_ns - frame.t_received_ns) / 1e6,
        decode=decode_ms,
        preprocess=prepared.preprocess_ms,
        infer=judged.infer_ms,
        postprocess=judged.postprocess_ms,
        total=(t_done_ns - header.t_capture_ns) / 1e6,
    )


def outcomes(prepared: PreparedBatch, judged: Judged, t_done_ns: int, ok_rate: float) -> list[Outcome]:
    """One result per frame of the batch, with the image to archive where it is archived."""
    active = prepared.active
    made = []
    for frame, image, judgement, decode_ms in zip(
        prepared.frames, prepared.images, judged.judgements, prepared.decode_ms, strict=True
    ):
        header = frame.header
        result = InspectionResult(
            camera_id=header.camera_id,
            seq=header.seq,
            part_id=header.part_id,
            station=header.station,
            t_capture_ns=header.t_capture_ns,
            verdict=judgement.verdict,
            score=judgement.score,
            threshold=NORMALISED_THRESHOLD,
            defects=judgement.defects,
            model=active.ref,
            timings_ms=stage_timings(frame, prepared, decode_ms, judged, t_done_ns),
            rule=judgement.rule or None,
            recipe=judged.recipe,
        )
        archive = image_to_archive(result, image, ok_rate)
        # The heat map itself is drawn by the record stage, off the inference thread.
        heat_source = None
        if archive is not None and judgement.anomaly_map is not None:
            heat_source = (judgement.anomaly_map, active.card)
        made.append(Outcome(result, archive, active.device, heat_source))
    return made


class InferStage(Stage):
    """Takes prepared batches from `slot` until None, hands their outcomes to the record stage.

    `alarms` evaluates the recipe's line alarms over recorded results: the record stage calls its
    `observe` (another thread; it reads the recipe in force, a reference swapped whole)."""

    name = "infer"

    def __init__(
        self,
        slot: InferenceSlot[PreparedBatch],
        record: RecordStage,
        rules: QualityRules,
        archive_ok_rate: float,
        device_path: DeviceFramePath | None,
        metrics: InspectorMetrics,
    ) -> None:
        super().__init__()
        self._slot = slot
        self._outbox = record.inbox
        self._rules = rules
        self._ok_rate = archive_ok_rate
        self._device_path = device_path
        self._metrics = metrics
        # Raises RecipeError when the file went bad since the config was validated: no old recipe to keep.
        self.recipes = (
            RecipeHolder(rules.recipe, rules, on_reload=metrics.recipe_reload)
            if rules.recipe is not None
            else None
        )
        self.alarms = AlarmEvaluator(self.alarm_rules, metrics)

    def alarm_rules(self) -> list[AlarmRule]:
        """The line alarms of the recipe in force (none without a recipe file)."""
        return self.recipes.loaded.recipe.alarms if self.recipes is not None else []

    def run(self) -> None:
        try:
            while (prepared := self._slot.get()) is not None:
                with self.working():
                    judged = self.judge(prepared)
                self._outbox.put(judged)
                self._slot.done()
        finally:
            self._outbox.put(None)

    def judge(self, prepared: PreparedBatch) -> list[Outcome]:
        recipe = self.recipes.current() if self.recipes is not None else None
        judged = judge(prepared, self.run_model, self._rules, recipe)
        if judged.failed_stage is not None:
            self._metrics.stage_error(judged.failed_stage)
            self.tally.add("stage_errors", judged.failed_stage)
            if prepared.failure is None:  # the prepare stage logged its own failure
                log_event(
                    log,
                    logging.ERROR,
                    f"{judged.failed_stage}_failed",
                    error=judged.error,
                    batch=len(prepared.frames),
                )
        try:
            return outcomes(prepared, judged, time.time_ns(), self._ok_rate)
        except Exception as exc:  # e.g. a model that answered for the wrong number of parts
            self._metrics.stage_error("postprocess")
            self.tally.add("stage_errors", "postprocess")
            log_event(log, logging.ERROR, "postprocess_failed", error=repr(exc), batch=len(prepared.frames))
            failed = Judged(
                review_judgements("postprocess", len(prepared.frames)),
                judged.infer_ms,
                0.0,
                recipe=judged.recipe,
            )
            without_images = dataclasses.replace(prepared, images=[None] * len(prepared.frames))
            return outcomes(without_images, failed, time.time_ns(), self._ok_rate)

    def run_model(self, active: ActiveModel, inputs: Any) -> dict[str, Any]:
        """The model's outputs as host arrays, as far as postprocess reads them."""
        if self._device_path is None:
            return active.model.run(inputs)
        return self._device_path.infer(active.model, inputs, active.card, self._rules)
