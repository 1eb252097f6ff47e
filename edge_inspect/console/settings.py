"""The console's settings: where the line's records are, its shift calendar and recipe, and how to serve."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from edge_inspect.bus.security import LOOPBACK_NAMES
from edge_inspect.inspector.config import InspectorConfig, ShiftsConfig
from edge_inspect.inspector.rules import QualityRules


@dataclass(frozen=True)
class ConsoleSettings:
    """`workdir` is the inspector's records.workdir (records.sqlite, images/); the console keeps its own
    state in `workdir/console.sqlite`. A camera without a result for `camera_timeout_s` is silent. The
    NG-rate alarm fires when at least `ng_rate_limit` of a camera's last `ng_rate_window` results are NG."""

    workdir: Path
    users_file: Path | None = None
    proxy_user_header: str | None = None
    address: str = "127.0.0.1"
    port: int = 8090
    shifts: ShiftsConfig = field(default_factory=ShiftsConfig)
    rules: QualityRules = field(default_factory=QualityRules)
    camera_timeout_s: float = 10.0
    ng_rate_window: int = 50
    ng_rate_limit: float = 0.2
    # How far back a console started on a store for the first time looks for alarms.
    history_s: float = 3600.0
    poll_s: float = 0.1

    def __post_init__(self) -> None:
        if self.proxy_user_header and not is_loopback_address(self.address):
            raise ValueError(
                f"--proxy-user-header trusts a header any client can send; bind the console to loopback "
                f"(--address 127.0.0.1, behind the proxy) instead of {self.address}"
            )
        if self.camera_timeout_s <= 0 or self.ng_rate_window < 1 or not 0 < self.ng_rate_limit <= 1:
            raise ValueError(
                "need camera_timeout_s > 0, ng_rate_window >= 1 and 0 < ng_rate_limit <= 1, got "
                f"{self.camera_timeout_s}, {self.ng_rate_window}, {self.ng_rate_limit}"
            )

    @property
    def db_path(self) -> Path:
        return self.workdir / "records.sqlite"

    @property
    def image_dir(self) -> Path:
        return self.workdir / "images"

    @property
    def state_path(self) -> Path:
        return self.workdir / "console.sqlite"

    @property
    def line(self) -> str:
        return self.shifts.line

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/"


def is_loopback_address(address: str) -> bool:
    if address in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # "0.0.0.0", a host name: reachable from the network


def from_inspector_config(config: InspectorConfig, **console: object) -> ConsoleSettings:
    """The console of the line `config` describes: its workdir, shifts and rules (with the recipe file)."""
    return ConsoleSettings(
        workdir=config.records.workdir,
        shifts=config.shifts,
        rules=config.rules,
        **console,  # type: ignore[arg-type]
    )
