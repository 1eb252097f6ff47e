"""Part ids from trigger sources, end to end: a PLC variable over OPC UA (a real asyncua server in its own
process, killed and restarted) and a barcode reader publishing on a real mosquitto broker; each id rides
with its frame into the inspector's records, where `edge-inspect records --part` finds it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge_inspect.camera_adapters.base import CameraConfig, SourceFrame, run_camera
from edge_inspect.camera_adapters.config import FrameIdPartIds, MqttPartIds, OpcUaPartIds
from edge_inspect.camera_adapters.part_ids import (
    MqttPartIdFeed,
    OpcUaPartIdFeed,
    PartIdQueue,
    open_feed,
    part_id_of,
)
from edge_inspect.inspector.service import Inspector
from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import ROOT, loopback_config, wait_until
from tests.output_peers import Mosquitto, free_port

S = 1_000_000_000


def test_part_id_of_reads_text_numbers_and_json_and_refuses_the_rest() -> None:
    assert part_id_of(b" SN-0042 \n") == "SN-0042"
    assert part_id_of(1234) == "1234"
    assert part_id_of('{"part_id": "A-7", "reader": "bc-1"}') == "A-7"
    for bad in (b"\xff\xfe", "", "x" * 200, "a\x00b", '{"code": 1}', True):
        with pytest.raises(ValueError):
            part_id_of(bad)


def test_next_matches_one_id_per_frame_and_drops_stale_ids() -> None:
    queue = PartIdQueue("next", max_age_s=1.0)
    queue.offer("p1", 0)
    queue.offer("p2", 2 * S)
    queue.offer(b"\xff", 2 * S)
    assert (
        queue.take(int(2.5 * S)) == "p2"
    )  # p1 was older than a second: stale, never shifted onto p2's frame
    assert queue.take(3 * S) is None
    assert (queue.counts.received, queue.counts.stale, queue.counts.invalid) == (2, 1, 1)
    assert queue.counts.frames_without_id == 1


def test_latest_repeats_the_newest_id() -> None:
    queue = PartIdQueue("latest", max_age_s=60)
    queue.offer("lot-1", 0)
    queue.offer("lot-2", 1)
    assert [queue.take(2), queue.take(3)] == ["lot-2", "lot-2"]
    feed = open_feed(FrameIdPartIds(source="frame_id", prefix="LS-"))
    assert feed.take(0, 17) == "LS-17" and feed.take(0, None) is None


def triggered_parts(trigger: Callable[[str], None], received: Callable[[], int], ids: list[str]) -> Iterator:
    """A station: each part is announced by its trigger source first, then photographed."""
    for index, part_id in enumerate(ids):
        trigger(part_id)
        wait_until(lambda index=index: received() == index + 1, 10, f"trigger {part_id} at the gateway")
        yield SourceFrame(np.full((24, 32), 40 + index, np.uint8))


def recorded_parts(db: Path) -> list[str | None]:
    with RecordStore(db) as store:
        return [r.part_id for r in sorted(store.query(limit=1000), key=lambda r: r.seq)]


PLC = """
import asyncio, sys
from asyncua import Server, ua

async def main(port):
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/plc")
    idx = await server.register_namespace("urn:test-plc")
    station = await server.nodes.objects.add_object(idx, "Station1")
    part = await station.add_variable(ua.NodeId("Station1.PartId", idx), "PartId", "none")
    loop = asyncio.get_running_loop()
    async with server:
        print(f"ready ns={idx}", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            await part.write_value(line.strip())

asyncio.run(main(int(sys.argv[1])))
"""


class Plc:
    """A PLC as a separate process: an asyncua server whose PartId variable takes each line of stdin."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PLC, str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        assert ready.startswith("ready"), f"the test PLC did not start: {ready!r}"
        return ready.split("ns=")[1].strip()

    def write(self, part_id: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(part_id + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.timeout(120)
def test_opc_ua_part_ids_reach_the_records_across_a_plc_restart(
    toy_map_model_dir: Path, tmp_path: Path
) -> None:
    plc = Plc(free_port())
    ns = plc.start()
    config = OpcUaPartIds(
        source="opcua", endpoint=f"opc.tcp://127.0.0.1:{plc.port}/plc", node=f"ns={ns};s=Station1.PartId"
    )
    feed = OpcUaPartIdFeed(config)
    inspector = Inspector(loopback_config(tmp_path, {"model.package": toy_map_model_dir}))
    try:
        inspector.start()
        wait_until(feed.connected.is_set, 20, "the feed subscribed to the PLC")
        camera = CameraConfig("cam-plc", "st-1", inspector.receiver.endpoint, fps=0, drain_s=10)
        received = lambda: feed.queue.counts.received  # noqa: E731
        first = [f"PLC-{n}" for n in range(1, 6)]
        run_camera(triggered_parts(plc.write, received, first), camera, threading.Event(), feed)
        plc.kill()  # the PLC restarts; the feed reconnects by itself
        wait_until(lambda: not feed.connected.is_set(), 20, "the feed noticed the PLC was gone")
        plc.start()
        wait_until(feed.connected.is_set, 30, "the feed resubscribed after the PLC restart")
        later = [f"PLC-{n}" for n in range(6, 9)]
        run_camera(
            triggered_parts(plc.write, lambda: received() - len(first), later),
            CameraConfig("cam-plc", "st-1", inspector.receiver.endpoint, fps=0, drain_s=10),
            threading.Event(),
            feed,
        )
        wait_until(lambda: len(recorded_parts(inspector.config.db_path)) == 8, 20, "8 results recorded")
    finally:
        feed.close()
        inspector.stop()
        plc.kill()
    assert sorted(recorded_parts(inspector.config.db_path)) == sorted(first + later)
    assert feed.queue.counts.frames_without_id == 0


@pytest.mark.timeout(120)
def test_mqtt_barcodes_reach_the_records_and_records_part_finds_the_history(
    toy_map_model_dir: Path, tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    feed = MqttPartIdFeed(MqttPartIds(source="mqtt", port=broker.port, topic="line-1/st-1/barcode"))
    reader = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    reader.connect("127.0.0.1", broker.port)
    reader.loop_start()
    inspector = Inspector(loopback_config(tmp_path / "insp", {"model.package": toy_map_model_dir}))
    try:
        inspector.start()
        wait_until(feed.connected.is_set, 20, "the feed subscribed")
        time.sleep(0.2)  # the SUBACK: a code published before it would not be delivered

        def scan(code: str) -> None:
            reader.publish("line-1/st-1/barcode", f'{{"part_id": "{code}"}}', qos=1).wait_for_publish(5)

        codes = ["SN-1", "SN-2", "SN-3", "SN-2"]  # SN-2 comes round again: reinspected
        camera = CameraConfig("cam-bc", "st-1", inspector.receiver.endpoint, fps=0, drain_s=10)
        run_camera(
            triggered_parts(scan, lambda: feed.queue.counts.received, codes), camera, threading.Event(), feed
        )
        wait_until(lambda: len(recorded_parts(inspector.config.db_path)) == 4, 20, "4 results recorded")
    finally:
        feed.close()
        reader.loop_stop()
        inspector.stop()
        broker.stop()
    assert recorded_parts(inspector.config.db_path) == codes
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_inspect",
            "records",
            "--db",
            str(inspector.config.db_path),
            "--part",
            "SN-2",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert out.count("SN-2") == 2 and "SN-1" not in out and "SN-3" not in out
