"""The inspector's config: the sample file, flags over the file, errors that name file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_inspect.cli import build_parser
from edge_inspect.cli.serve import overrides_from_args
from edge_inspect.inspector.config import ConfigError, load_config, to_toml
from edge_inspect.inspector.toml_errors import find_key_line
from tests.helpers import ROOT

SAMPLE = ROOT / "config" / "line.toml"


def effective(argv: list[str]) -> object:
    args = build_parser().parse_args(["serve", *argv])
    return load_config(Path(args.config) if args.config else None, overrides_from_args(args))


def test_the_sample_file_loads_with_its_documented_values() -> None:
    config = load_config(SAMPLE)
    assert config.model.package == Path("var/demo/model") and config.model.registry is None
    assert config.bus.bind == "tcp://127.0.0.1:5555"
    assert (config.batching.max_batch, config.batching.queue_depth) == (8, 32)
    assert config.records.archive_ok_rate == 0.02
    assert config.db_path == Path("var/inspector/records.sqlite")
    assert config.rules.min_defect_area_px == 0 and config.rules.review_band is None


def test_flags_override_the_file_key_by_key() -> None:
    config = effective(
        [
            "--config",
            str(SAMPLE),
            "--max-batch",
            "4",
            "--results",
            "",
            "--metrics-port",
            "-1",
            "--device",
            "cpu",
        ]
    )
    assert config.batching.max_batch == 4
    assert config.batching.max_wait_ms == 10.0  # from the file, untouched
    assert config.bus.results is None and config.metrics.port is None
    assert config.inference.device == "cpu"
    assert config.records.workdir == Path("var/inspector")


def test_a_registry_flag_replaces_the_files_package() -> None:
    config = effective(["--config", str(SAMPLE), "--registry", "s3://models/line-3", "--model-name", "cells"])
    assert (config.model.package, config.model.registry, config.model.name) == (
        None,
        "s3://models/line-3",
        "cells",
    )


def test_flags_alone_need_no_file() -> None:
    config = effective(["--model", "m", "--review-band", "0.1", "--min-defect-area", "25"])
    assert config.model.package == Path("m")
    assert (config.rules.review_band, config.rules.min_defect_area_px) == (0.1, 25)


def test_print_config_writes_a_file_that_reads_back_the_same(tmp_path: Path) -> None:
    config = effective(["--config", str(SAMPLE), "--max-batch", "3", "--mes-url", "https://mes.example/x"])
    written = tmp_path / "effective.toml"
    written.write_text(to_toml(config))
    assert load_config(written) == config


def test_unknown_keys_and_bad_values_name_the_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "line.toml"
    lines = [
        "[model]",
        'package = "m"',
        "",
        "[batching]",
        "max_batch = 0",
        "max_wiat_ms = 5",
        "",
        "[inference]",
    ]
    bad.write_text("\n".join([*lines, 'device = "tpu"', ""]))
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    message = str(caught.value)
    assert f"{bad}:5: batching.max_batch: Input should be greater than or equal to 1" in message
    assert (
        f"{bad}:6: batching.max_wiat_ms: unknown key; known keys: max_batch, max_wait_ms, queue_depth"
        in message
    )
    assert f"{bad}:9: inference.device: Input should be 'auto', 'cpu' or 'cuda'" in message


def test_an_unknown_section_and_a_missing_model_are_explained(tmp_path: Path) -> None:
    bad = tmp_path / "line.toml"
    bad.write_text('[bsu]\nbind = "tcp://127.0.0.1:5555"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    message = str(caught.value)
    assert f"{bad}:1: bsu: unknown key; known keys: model, bus, batching" in message
    assert "model: no model to serve; give --model DIR, --registry URL --model-name NAME" in message


def test_toml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "line.toml"
    bad.write_text('[model]\npackage = "m"\n[batching\n')
    with pytest.raises(ConfigError, match=r"line.toml: not valid TOML: .*line 3"):
        load_config(bad)


def test_a_missing_file_says_so() -> None:
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read the config file"):
        load_config(Path("nope.toml"))


def test_contradictory_inference_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"device frame path only"):
        effective(["--model", "m", "--frame-path", "host", "--runtime", "torch"])


def test_find_key_line_reads_tables_and_dotted_keys() -> None:
    text = '# comment\nbatching.max_batch = 2\n[bus]\nbind = "x"\n"results" = ""\n[mes]\n'
    assert find_key_line(text, ("batching", "max_batch")) == 2
    assert find_key_line(text, ("bus", "results")) == 5
    assert find_key_line(text, ("mes", "url")) == 6  # missing key: its table's header
    assert find_key_line(text, ("metrics", "port")) is None


def test_serve_refuses_a_bad_file_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "line.toml"
    bad.write_text('[model]\npackage = "m"\n[bus]\nbnd = "tcp://127.0.0.1:5555"\n')
    result = subprocess.run(
        [sys.executable, "-m", "edge_inspect", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"{bad}:4: bus.bnd: unknown key; known keys: bind, results" in result.stderr
