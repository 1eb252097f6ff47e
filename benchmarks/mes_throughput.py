"""MES delivery throughput: how fast the outbox drains into a receiver on loopback.

    python benchmarks/mes_throughput.py [--results 5000] [--batch 32] [--mode deliverer|deliver_once]

1. Record N inspection results with their outbox rows in a temporary record store (as the inspector
   does, in transactions of 64).
2. Start a stand-in MES in a process of its own: python's ThreadingHTTPServer on 127.0.0.1, HTTP/1.1
   keep-alive and TCP_NODELAY (as production servers set it), de-duplicating by Idempotency-Key.
3. Time from starting delivery until no row is pending: `--mode deliverer` runs the WebhookDeliverer
   thread (what the inspector runs), `--mode deliver_once` calls deliver_once in a loop on one client.
Prints one JSON object last: results/s, N, the batch, POSTs made, TCP connections the receiver saw.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from urllib.request import urlopen

from edge_inspect.bus.contracts import InspectionResult, ModelRef, StageTimings
from edge_inspect.inspector.config import MesConfig
from edge_inspect.sinks.mes_webhook import MesClient, WebhookConfig, WebhookDeliverer, deliver_once
from edge_inspect.sinks.record_store import RecordStore


def serve_mes(ready: Connection) -> None:
    """The stand-in MES (runs in a child process): POST / stores by key, GET /stats reports."""
    keys: set[str] = set()
    ports: set[int] = set()
    posts = 0
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            nonlocal posts
            json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                posts += 1
                keys.add(self.headers["Idempotency-Key"])
                ports.add(self.client_address[1])
            self._reply(b"{}")

        def do_GET(self) -> None:
            with lock:
                stats = {"posts": posts, "unique_keys": len(keys), "connections": len(ports)}
            self._reply(json.dumps(stats).encode())

        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        block_on_close = False

        def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().finish_request(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    ready.send(server.server_port)
    server.serve_forever(0.05)


def make_results(count: int, start_ns: int) -> list[InspectionResult]:
    model = ModelRef("demo", "3", "ab" * 32)
    return [
        InspectionResult(
            camera_id=f"cam{seq % 4}",
            seq=seq,
            part_id=f"P{seq:07d}",
            station="st-1",
            t_capture_ns=start_ns + seq * 1_000_000,
            verdict="NG" if seq % 10 == 0 else "OK",
            score=0.1 + (seq % 7) / 10,
            threshold=0.5,
            defects=[],
            model=model,
            timings_ms=StageTimings(total=12.5),
        )
        for seq in range(count)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=int, default=5000, help="results to deliver (default 5000)")
    parser.add_argument(
        "--batch",
        type=int,
        default=MesConfig.model_fields["batch"].default,
        help="deliveries per pass, mes.batch (default: the config's default)",
    )
    parser.add_argument("--mode", choices=("deliverer", "deliver_once"), default="deliverer")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    mes = ctx.Process(target=serve_mes, args=(child,), daemon=True)
    mes.start()
    try:
        port = parent.recv()
        url = f"http://127.0.0.1:{port}"
        config = WebhookConfig(url=f"{url}/mes/results", batch=args.batch)
        with tempfile.TemporaryDirectory(prefix="mes-throughput-") as tmp:
            db = Path(tmp) / "records.sqlite"
            with RecordStore(db) as store:
                results = make_results(args.results, time.time_ns() - 10**9)
                for i in range(0, len(results), 64):
                    store.add_results(results[i : i + 64], with_outbox=True, now_ns=time.time_ns() - 10**9)
                seconds = (
                    run_deliverer(db, config, store, args.timeout)
                    if args.mode == "deliverer"
                    else run_deliver_once(store, config, args.timeout)
                )
                counts = store.outbox_counts()
        with urlopen(f"{url}/stats", timeout=10) as reply:
            stats = json.loads(reply.read())
    finally:
        mes.terminate()
        mes.join(5)
    if counts["delivered"] != args.results or stats["unique_keys"] != args.results:
        print(f"not all delivered: outbox {counts}, receiver {stats}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "benchmark": "mes_throughput",
                "mode": args.mode,
                "results": args.results,
                "batch": args.batch,
                "seconds": round(seconds, 3),
                "results_per_s": round(args.results / seconds, 1),
                "posts": stats["posts"],
                "connections": stats["connections"],
                "receiver": "ThreadingHTTPServer, own process, HTTP/1.1 keep-alive, TCP_NODELAY",
            }
        )
    )
    return 0


def run_deliverer(db: Path, config: WebhookConfig, store: RecordStore, timeout_s: float) -> float:
    deliverer = WebhookDeliverer(db, config, idle_poll_s=0.05)
    start = time.perf_counter()
    deliverer.start()
    try:
        while store.count_pending():
            if time.perf_counter() - start > timeout_s:
                raise SystemExit(f"still {store.count_pending()} pending after {timeout_s} s")
            time.sleep(0.005)
        return time.perf_counter() - start
    finally:
        deliverer.stop(timeout_s=10)


def run_deliver_once(store: RecordStore, config: WebhookConfig, timeout_s: float) -> float:
    with MesClient(config) as client:
        start = time.perf_counter()
        while store.count_pending():
            if time.perf_counter() - start > timeout_s:
                raise SystemExit(f"still {store.count_pending()} pending after {timeout_s} s")
            deliver_once(store, config, time.time_ns(), client.post)
        return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
