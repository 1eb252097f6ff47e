"""Fuzz campaign against a real inspector process: generated and mutated frame messages through receive →
judge → record store → MES outbox → a real HTTP receiver, then the accounts are checked.

    python -m benchmarks.fuzz_campaign --messages 1000000

Every message must be accounted for exactly once: judged (a record, and an MES delivery), counted as
malformed under a reason, or counted as superseded (a mutated header may ask for `latest` delivery).
Every untouched valid frame must have its record and its delivery; the process must be alive and
answering /metrics at the end and stop cleanly on SIGTERM. The model is the tests' toy brightness model
(tests/toy_models.py), so the figure is the bus and the stages, not a network. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import zmq

from benchmarks.fuzz_frames import FrameFuzzer
from edge_inspect.demo import free_port
from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import MesReceiver, wait_until
from tests.toy_models import make_toy_package

POLL_S = 1.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_inspector(model: Path, workdir: Path, mes_url: str, log: Path) -> tuple[subprocess.Popen, dict]:
    argv = [
        *("serve", "--model", str(model), "--workdir", str(workdir), "--bind", "tcp://127.0.0.1:*"),
        *(
            "--results",
            "",
            "--metrics-port",
            str(free_port()),
            "--mes-url",
            mes_url,
            "--mes-max-backoff",
            "1",
        ),
        *("--frame-path", "host", "--threads", "1"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_inspect", *argv],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    if ready.get("event") != "ready":
        raise SystemExit(f"fuzz_campaign: the inspector did not start: {ready}")
    return proc, ready


def send_all(endpoint: str, fuzzer: FrameFuzzer, count: int, valid_share: float) -> dict[str, object]:
    """Send every message from a DEALER (the inspector's bus is a ROUTER), blocking on back-pressure; what
    was sent, by kind. The inspector's acks are not read: this is a raw client, not a camera."""
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.SNDHWM, 64)
    socket.setsockopt(zmq.LINGER, 10_000)
    socket.connect(endpoint)
    kinds = {"valid": 0, "invalid": 0, "unknown": 0}
    valid_ids: list[str] = []
    started = time.perf_counter()
    for index, message in enumerate(fuzzer.messages(count, valid_share)):
        socket.send_multipart(message.parts)
        kinds[message.kind] += 1
        if message.kind == "valid":
            valid_ids.append(f"{message.camera_id}:{10**18 + message.seq}:{message.seq}")
        if index and index % 100_000 == 0:
            say(f"  {index} messages sent ({index / (time.perf_counter() - started):.0f}/s)")
    # Closing while the inspector's acks still arrive makes ZeroMQ drop the rest of the outgoing queue: read
    # (and ignore) them until the inspector has been quiet for a while, then close.
    while socket.poll(3000, zmq.POLLIN):
        socket.recv_multipart()
    socket.close()
    context.term()
    return {"kinds": kinds, "valid_ids": valid_ids, "send_s": time.perf_counter() - started}


def scrape_ok(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.status == 200 and b"edgeinspect_frames_received_total" in reply.read()


def delivered(mes: MesReceiver) -> set[str]:
    """Result ids the MES received (the Idempotency-Key is the id percent-encoded as UTF-8)."""
    return {unquote(key) for key in mes.keys}


def recorded_ids(db: Path) -> set[str]:
    with RecordStore(db) as store:
        return {r.result_id for r in store.query(limit=10**9)}


def campaign(messages: int, seed: int, valid_share: float, timeout_s: float) -> dict[str, object]:
    mes = MesReceiver()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        workdir = Path(tmp) / "inspector"
        model = make_toy_package(Path(tmp) / "model")
        log = Path(tmp) / "inspector.log"
        proc, ready = start_inspector(model, workdir, mes.url, log)
        try:
            sent = send_all(ready["bind"], FrameFuzzer(seed), messages, valid_share)
            valid_ids = set(sent["valid_ids"])
            say(f"sent {messages} messages {sent['kinds']}; waiting for records and deliveries")
            # Polled seldom: the MES receiver shares this process, and a check reads every id.
            db = workdir / "records.sqlite"
            wait_until(lambda: valid_ids <= recorded_ids(db), timeout_s, "valid records", poll_s=POLL_S)
            wait_until(
                lambda: valid_ids <= delivered(mes), timeout_s, "valid frames delivered", poll_s=POLL_S
            )
            alive = proc.poll() is None and scrape_ok(ready["metrics_port"])
            # Every judged frame's delivery, not only the untouched ones', before the process stops.
            recorded = recorded_ids(workdir / "records.sqlite")
            wait_until(lambda: recorded <= delivered(mes), timeout_s, "every record delivered", poll_s=POLL_S)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            mes.close()
        summary = json.loads(out.strip().splitlines()[-1])
        log_lines = len(log.read_text(errors="replace").splitlines())
    superseded = summary["dropped_by_reason"].get("superseded", 0)
    # A mutated message may repeat a valid frame exactly: recognised as a duplicate, not judged twice.
    accounted = summary["inspected"] + summary["malformed"] + superseded + summary.get("duplicate", 0)
    return {
        "messages": messages,
        "seed": seed,
        "sent_by_kind": sent["kinds"],
        "send_rate_per_s": round(messages / sent["send_s"]),
        "alive_at_end": alive,
        "exit_code": proc.returncode,
        "inspected": summary["inspected"],
        "malformed": summary["malformed"],
        "malformed_by_reason": summary["malformed_by_reason"],
        "superseded": superseded,
        "accounted": accounted,
        "all_accounted": accounted == messages,
        "invalid_counted": summary["malformed"] >= sent["kinds"]["invalid"],
        "valid_recorded_and_delivered": len(valid_ids),
        "records": len(recorded),
        "mes_deliveries_unique": len(delivered(mes)),
        "records_equal_deliveries": recorded == delivered(mes),
        "inspector_log_lines": log_lines,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--messages", type=int, default=1_000_000, help="messages to send (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    parser.add_argument(
        "--valid-share",
        type=float,
        default=0.1,
        help="share of untouched valid frames (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for the accounts to settle"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    report = campaign(args.messages, args.seed, args.valid_share, args.timeout)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report), flush=True)
    ok = report["all_accounted"] and report["alive_at_end"] and report["exit_code"] == 0
    return 0 if ok and report["records_equal_deliveries"] and report["invalid_counted"] else 1


if __name__ == "__main__":
    sys.exit(main())
