"""deploy/ validated offline: images cannot be built nor containers started on the test machines, so the
compose files are checked against the Compose Specification's JSON schema, the systemd units by
`systemd-analyze verify`, and every command, port and path in compose, Dockerfiles and units against the
CLI's real parser, the inspector's config loader and each other."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from edge_inspect.camera_adapters.config import load_line_cameras
from edge_inspect.cli import build_parser
from edge_inspect.inspector.config import InspectorConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = (DEPLOY / "compose.yaml", DEPLOY / "compose.gpu.yaml")
SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
# A template unit is verified and parsed as this instance.
CAMERA_INSTANCE = "cam-1"
INSTALLED_CLI = "/opt/edge-inspect/venv/bin/edge-inspect"


# --- helpers: the CLI, compose, Dockerfiles, units ---------------------------------------------------


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """argv (after `edge-inspect`) parsed by the real CLI; an error is a failed test naming the line."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] not in commands:
        # The console's command module exists before it is registered; say what the test waits for.
        awaited = (
            " (waiting for edge_inspect/cli/__init__.py to register edge_inspect/cli/console.py)"
            if argv[0] == "console"
            else ""
        )
        pytest.fail(f"`edge-inspect {argv[0]}` does not exist; deploy/ runs `{shlex.join(argv)}`{awaited}")
    # argparse accepts a flag's unambiguous prefix; deploy/ must spell every flag out.
    unknown = {word.split("=")[0] for word in argv if word.startswith("--")} - option_strings(parser)
    assert not unknown, f"edge-inspect {shlex.join(argv)}: not the CLI's flags: {sorted(unknown)}"
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            return parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"edge-inspect {shlex.join(argv)}: {errors.getvalue()}")


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag of a parser and of its sub-commands, at any depth."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= option_strings(sub)
    return found


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's volumes as {target: source} (short syntax, `:ro` dropped; a source may be `${VAR:-x}`)."""
    pairs = (volume.removesuffix(":ro").rsplit(":", 1) for volume in service.get("volumes", []))
    return {target: source for source, target in pairs}


def flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {shlex.join(argv)}"
    return argv[argv.index(name) + 1]


def line_config() -> tuple[Path, InspectorConfig]:
    path = DEPLOY / "compose" / "line.toml"
    return path, load_config(path)


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def instruction(path: Path, keyword: str) -> list[str]:
    return [args for key, args in dockerfile(path) if key == keyword]


def exec_form(args: str) -> list[str]:
    """An exec-form (JSON array) argument; the shell form would need a shell in the image to parse it."""
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(word, str) for word in parsed), args
    return parsed


def dockerfile_of(image: str) -> Path:
    """The Dockerfile that builds `image`, from the build sections of the compose files."""
    for path in COMPOSE_FILES:
        for service in load_yaml(path)["services"].values():
            if service.get("image") == image and "build" in service:
                return (path.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
    raise AssertionError(f"no compose service builds {image}")


def unit_values(path: Path, key: str) -> list[str]:
    """The values of `key=` in a unit file (keys may repeat), with %i set to the test instance."""
    return [
        line.split("=", 1)[1].replace("%i", CAMERA_INSTANCE)
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"{key}=")
    ]


def verify_units(units: list[Path], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` in a root of its own: the host's system units (targets the units order
    against), the units under test in /etc/systemd/system, and an executable where they expect the CLI (a
    stand-in: verify checks that ExecStart names an executable, not what it does)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed: run `make peers` (apt-get install -y systemd)")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    cli = root / INSTALLED_CLI.lstrip("/")
    cli.parent.mkdir(parents=True)
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    names = [unit.name.replace("@.", f"@{CAMERA_INSTANCE}.") for unit in units]
    return subprocess.run(
        [analyze, "verify", f"--root={root}", *names], capture_output=True, text=True, timeout=60, check=False
    )


# --- compose ----------------------------------------------------------------------------------------


def test_compose_files_follow_the_compose_specification(tmp_path: Path) -> None:
    """The schema is the one check-jsonschema ships (vendor.compose-spec, from the compose-spec repository,
    Apache-2.0): nothing is downloaded."""
    check = Path(sys.executable).with_name("check-jsonschema")
    if not check.exists():
        pytest.fail("check-jsonschema is not installed: install the dev extra (pip install -e '.[dev]')")

    def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
        command = [str(check), "--builtin-schema", "vendor.compose-spec", *map(str, paths)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    checked = validate(*COMPOSE_FILES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The same check refuses a misspelt key, so a pass above means something.
    misspelt = tmp_path / "compose.yaml"
    misspelt.write_text(
        "services:\n  inspector:\n    image: edge-inspect/inspector:cpu\n    comand: [serve]\n"
    )
    assert validate(misspelt).returncode != 0


def test_compose_services_run_real_cli_commands() -> None:
    ran = set()
    for path in COMPOSE_FILES:
        for name, service in load_yaml(path)["services"].items():
            image = service.get("image", "")
            if not image.startswith("edge-inspect/"):
                continue
            entrypoint = exec_form(instruction(dockerfile_of(image), "ENTRYPOINT")[-1])
            assert entrypoint == ["edge-inspect"], f"{image}: {entrypoint}"
            command = service.get("command") or exec_form(instruction(dockerfile_of(image), "CMD")[-1])
            parse_cli(command)
            ran.add((name, command[0]))
    assert {("inspector", "serve"), ("camera", "camera"), ("console", "console")} <= ran


def test_compose_wiring_matches_the_line_config() -> None:
    services = compose()["services"]
    config_path, config = line_config()
    port = config.metrics.port
    assert config.metrics.address == "0.0.0.0", "Prometheus scrapes the inspector from another container"

    inspector = services["inspector"]
    argv = inspector["command"]
    assert mounts(inspector)[flag(argv, "--config")] == f"./{config_path.relative_to(DEPLOY)}"
    # The model: the operator's EDGE_INSPECT_MODEL, by default where `make demo` puts its model.
    model_source = mounts(inspector)[str(config.model.package)]
    default_model = re.fullmatch(r"\$\{EDGE_INSPECT_MODEL:-\.\./(.+)\}", model_source)
    assert default_model, model_source
    assert Path(default_model.group(1)) == load_config(ROOT / "config" / "line.toml").model.package
    assert str(config.records.workdir) in mounts(inspector)
    bus_dir = str(Path(urlsplit(config.bus.bind).path).parent)
    assert mounts(inspector)[bus_dir] == "bus"
    assert f"127.0.0.1:{port}/readyz" in inspector["healthcheck"]["test"][-1]
    assert str(port) in inspector["expose"]

    camera = services["camera"]
    argv = camera["command"]
    assert mounts(camera)[flag(argv, "--config")] == f"./{config_path.relative_to(DEPLOY)}"
    entry = load_line_cameras(config_path).camera(flag(argv, "--camera"))
    assert entry.endpoint == config.bus.bind
    assert mounts(camera)[bus_dir] == "bus"
    assert entry.state_dir is not None and mounts(camera)[str(entry.state_dir)] == "camera-state"

    console = services["console"]
    argv = console["command"]
    assert mounts(console)[flag(argv, "--config")] == f"./{config_path.relative_to(DEPLOY)}"
    # The console loads the same config, whose model path must exist there too, and reads the records.
    assert mounts(console)[str(config.model.package)] == mounts(inspector)[str(config.model.package)]
    assert mounts(console)[str(config.records.workdir)] == mounts(inspector)[str(config.records.workdir)]
    assert mounts(console)[str(Path(flag(argv, "--users")).parent)] == "console-users"
    assert f"{flag(argv, '--port')}:{flag(argv, '--port')}" in console["ports"]
    assert f"127.0.0.1:{flag(argv, '--port')}/healthz" in console["healthcheck"]["test"][-1]

    assert config.mqtt.host in services
    listener = re.search(r"^listener (\d+)", (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(), re.M)
    assert listener and int(listener.group(1)) == config.mqtt.port
    assert str(config.mqtt.port) in services[config.mqtt.host]["expose"]

    prometheus_config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = [
        t for job in prometheus_config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert targets == [f"inspector:{port}"]
    prometheus_mounts = mounts(services["prometheus"])
    config_dir = Path(flag_value(services["prometheus"]["command"], "--config.file")).parent
    for rule_file in prometheus_config["rule_files"]:
        assert prometheus_mounts[str(config_dir / rule_file)] == f"./prometheus/{rule_file}"


def flag_value(argv: list[str], name: str) -> str:
    """The value of a `--name=value` flag."""
    values = [word.split("=", 1)[1] for word in argv if word.startswith(f"{name}=")]
    assert len(values) == 1, f"{name}= in {argv}"
    return values[0]


def test_grafana_is_provisioned_with_the_dashboard_and_the_datasource_it_expects() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    grafana_mounts = {target: DEPLOY / source for target, source in mounts(grafana).items() if "/" in source}
    provisioning = grafana_mounts["/etc/grafana/provisioning"]
    datasource = load_yaml(provisioning / "datasources" / "edge-inspect.yaml")["datasources"][0]
    url = urlsplit(datasource["url"])
    assert url.hostname in services and f"127.0.0.1:{url.port}:{url.port}" in services[url.hostname]["ports"]
    provider = load_yaml(provisioning / "dashboards" / "edge-inspect.yaml")["providers"][0]
    dashboards = grafana_mounts[provider["options"]["path"]]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    dashboard = json.loads((dashboards / home.relative_to(provider["options"]["path"])).read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == datasource["uid"]
    secret = DEPLOY / compose()["secrets"]["grafana-admin-password"]["file"]
    assert secret.name in (secret.parent / ".gitignore").read_text().split(), (
        "the password is never committed"
    )


def test_compose_bind_mounts_name_files_in_the_repository() -> None:
    for path in COMPOSE_FILES:
        for name, service in load_yaml(path)["services"].items():
            for target, source in mounts(service).items():
                if source.startswith("${"):  # the model: the operator's path, with the demo's as default
                    continue
                if source.startswith("."):
                    assert (path.parent / source).exists(), f"{name}: {source} (mounted at {target})"


# --- Dockerfiles --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gateway", "inspector-cpu", "inspector-gpu"])
def test_dockerfile_copies_only_what_its_context_sends_and_runs_the_cli(name: str) -> None:
    path = DEPLOY / "docker" / f"{name}.Dockerfile"
    allowed = {
        line[1:].rstrip("/")
        for line in path.with_name(path.name + ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for copy in instruction(path, "COPY"):
        if copy.startswith("--from="):
            continue
        *sources, _destination = copy.split()
        for source in sources:
            assert source in allowed, f"{name}: COPY {source} is excluded by its .dockerignore"
            assert (ROOT / source).exists(), f"{name}: COPY {source}: not in the repository"
    assert instruction(path, "USER") == ["edge-inspect"], "images run as the unprivileged user"
    assert exec_form(instruction(path, "ENTRYPOINT")[-1]) == ["edge-inspect"]
    parse_cli(exec_form(instruction(path, "CMD")[-1]))


def test_gateway_image_installs_the_base_package_only_and_inspectors_their_extras() -> None:
    def installs(name: str) -> str:
        runs = [r for r in instruction(DEPLOY / "docker" / f"{name}.Dockerfile", "RUN") if "pip install" in r]
        assert len(runs) == 1, name
        return runs[0]

    assert installs("gateway").split()[-1] == "."  # `pip install .`: no extra, so no torch, no onnxruntime
    assert '".[inspector,console]"' in installs("inspector-cpu") and "torch" not in installs("inspector-cpu")
    assert '".[inspector,console]" torch torchvision triton' in installs("inspector-gpu")
    for name in ("gateway", "inspector-cpu", "inspector-gpu"):
        assert "--constraint constraints.txt" in installs(name), f"{name}: pinned like the tests"


def test_inspector_images_probe_the_configured_metrics_port() -> None:
    _, config = line_config()
    for name in ("inspector-cpu", "inspector-gpu"):
        path = DEPLOY / "docker" / f"{name}.Dockerfile"
        assert instruction(path, "EXPOSE") == [str(config.metrics.port)]
        (healthcheck,) = instruction(path, "HEALTHCHECK")
        assert f"127.0.0.1:{config.metrics.port}/readyz" in healthcheck


def test_gpu_image_library_path_names_the_pinned_cuda_wheels() -> None:
    """ONNX Runtime's CUDA provider finds CUDA and cuDNN through LD_LIBRARY_PATH: each directory must be
    where the pinned NVIDIA wheels put their libraries, as they are installed in this environment."""
    path = DEPLOY / "docker" / "inspector-gpu.Dockerfile"
    (env,) = [e for e in instruction(path, "ENV") if "LD_LIBRARY_PATH=" in e]
    directories = re.search(r"LD_LIBRARY_PATH=(\S+)", env).group(1).split(":")  # type: ignore[union-attr]
    base = {args.split()[0] for args in instruction(path, "FROM")}
    assert base == {"python:3.11-slim-bookworm"}
    in_image = "/opt/edge-inspect/lib/python3.11/site-packages/"
    site_packages = Path(next(p for p in sys.path if p.endswith("site-packages")))
    found = set()
    for directory in directories:
        assert directory.startswith(in_image), directory
        here = site_packages / directory.removeprefix(in_image)
        assert here.is_dir(), f"{here}: not where the pinned wheels install (install the train extra)"
        found |= {library.name.split(".so")[0] for library in here.iterdir()}
    assert {"libcudart", "libcublas", "libcudnn"} <= found


# --- systemd ------------------------------------------------------------------------------------------


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert {unit.name for unit in UNITS} == {
        "edge-inspect-inspector.service",
        "edge-inspect-console.service",
        "edge-inspect-camera@.service",
    }
    verified = verify_units(UNITS, tmp_path / "shipped")
    # verify reports unknown keys and bad values on stderr but still exits 0: any output is a failure.
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), (
        verified.stdout + verified.stderr
    )
    # The same check speaks up for a misspelt key, so silence above means something.
    misspelt = tmp_path / "edge-inspect-misspelt.service"
    misspelt.write_text(UNITS[0].read_text().replace("Restart=", "Restrat=", 1))
    assert "Unknown key" in verify_units([misspelt], tmp_path / "misspelt").stderr


def test_systemd_units_run_real_cli_commands() -> None:
    configs = set()
    for unit in UNITS:
        (exec_start,) = unit_values(unit, "ExecStart")
        binary, *argv = shlex.split(exec_start)
        assert binary == INSTALLED_CLI, unit.name
        args = parse_cli(argv)
        configs.add(str(args.config))
        if args.command == "console":
            assert args.address == "127.0.0.1", "the console is published through a TLS reverse proxy"
        if args.command == "camera":
            assert args.camera == CAMERA_INSTANCE, "the instance name is the camera id"
            (state,) = unit_values(unit, "StateDirectory")
            assert state == f"edge-inspect-camera/{CAMERA_INSTANCE}"
    assert configs == {"/etc/edge-inspect/line.toml"}, "every unit reads the one line config"
