"""The plant outputs of an inspector (MQTT, OPC UA), started and stopped with it (docs/outputs.md).

Each output follows the record store on its own (sinks/result_tail.py), so the pipeline's stages know
nothing of them: the service only calls `start_outputs` and `stop_outputs`. Their cursors and state
live in `<workdir>/outputs.sqlite`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edge_inspect.inspector.config import InspectorConfig
from edge_inspect.logs import log_event

if TYPE_CHECKING:
    from edge_inspect.sinks.metrics import InspectorMetrics

log = logging.getLogger(__name__)


class Output(Protocol):
    def start(self) -> None: ...

    def stop(self, timeout_s: float = ...) -> None: ...


def state_path(config: InspectorConfig) -> Path:
    return config.records.workdir / "outputs.sqlite"


def start_outputs(config: InspectorConfig, metrics: InspectorMetrics | None = None) -> list[Output]:
    """Start the outputs the config enables; an output that cannot start stops the ones already started
    and raises (an OPC UA port taken is a configuration error to see at once). An MQTT broker that is
    not reachable is not: the output connects when it comes."""
    outputs: list[Output] = []
    try:
        if config.mqtt.enabled:
            from edge_inspect.sinks.mqtt_output import MqttOutput

            outputs.append(MqttOutput(config.mqtt, config.db_path, state_path(config), metrics))
            outputs[-1].start()
        if config.opcua.enabled:
            from edge_inspect.sinks.opcua_output import OpcUaOutput

            outputs.append(OpcUaOutput(config.opcua, config.db_path, state_path(config), metrics))
            outputs[-1].start()
    except BaseException:
        stop_outputs(outputs)
        raise
    return outputs


def stop_outputs(outputs: list[Output], timeout_s: float = 5.0) -> None:
    """Stop each output, giving it `timeout_s` to publish what is left (the rest waits for the next
    start in the record store)."""
    for output in outputs:
        try:
            output.stop(timeout_s)
        except Exception as exc:  # one output failing to stop must not keep the others running
            log_event(log, logging.ERROR, "output_stop_failed", output=type(output).__name__, error=repr(exc))
