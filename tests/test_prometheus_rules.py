"""deploy/prometheus and deploy/grafana checked by Prometheus's own promtool: the rules parse and pass their
unit tests, every alert is tested, every dashboard query is valid PromQL, and every metric they name is one
the inspector really exports."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from types import ModuleType

import yaml
from prometheus_client.parser import text_string_to_metric_families

from edge_inspect.inspector.camera_health import camera_families
from edge_inspect.sinks.metrics import InspectorMetrics, NvmlCollector
from tests.prometheus_peer import PROMETHEUS_DIR, ROOT, RULES, alert_rules, load_rules, promtool

RULE_TESTS = PROMETHEUS_DIR / "edge-inspect.rules.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "edge-inspect-line.json"
# What Grafana puts in place of its variables before a query reaches Prometheus: a range for the interval
# variables, a match-all regular expression for the dashboard's (multi-value, `=~` matchers only).
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
DASHBOARD_VARIABLES = ("line", "instance", "camera", "stage")
METRIC_NAME = re.compile(r"(?<![\w:])edgeinspect_\w+(?![\w:])")


def exported_metric_names() -> set[str]:
    """Every sample name the inspector's /metrics can carry: what a real metrics endpoint (served with
    probes, as the inspector serves it) answers, the per-camera collector, and the NVML collector (which
    exists only where NVML does, so it is described here without a GPU)."""
    metrics = InspectorMetrics()
    probes = {"/healthz": lambda: {"infer": "ok"}, "/readyz": lambda: {"store": "ok"}}
    server = metrics.serve(port=0, probes=probes)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            scraped = list(text_string_to_metric_families(response.read().decode()))
    finally:
        server.close()
    families = [
        *scraped,
        *camera_families([], 0, lambda _camera: 10.0),
        *NvmlCollector(ModuleType("pynvml")).describe(),
    ]
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "info": ("_info",),
        "gauge": ("",),
        "unknown": ("",),
    }
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


def dashboard_queries() -> dict[str, str]:
    """Every PromQL expression of the dashboard, by where it is (panel and target, or variable), with
    Grafana's variables replaced as Grafana replaces them."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = {
        f"panel {panel['id']} ({panel['title']}) target {target['refId']}": target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(SELECTOR, LABEL) is Grafana's; the selector inside is PromQL.
            selector = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert selector, f"variable {variable['name']}: not label_values(SELECTOR, LABEL)"
            queries[f"variable {variable['name']}"] = selector.group(1)
    resolved = {}
    for where, expr in queries.items():
        for variable, value in GRAFANA_INTERVALS.items():
            expr = expr.replace(variable, value)
        for variable in DASHBOARD_VARIABLES:
            expr = expr.replace(f"${variable}", ".*")
        assert "$" not in expr, f"{where}: a Grafana variable the test does not know: {expr}"
        resolved[where] = expr
    return resolved


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in load_rules()["groups"] for rule in group["rules"]]


def test_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rules_pass_their_promtool_unit_tests() -> None:
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=PROMETHEUS_DIR)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_shown_firing_by_a_unit_test_and_says_what_to_do() -> None:
    alerts = alert_rules(load_rules())
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert set(alerts) - fired == set(), "alerts without a unit test that fires them"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_deploy_readme_lists_every_alert() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| (EdgeInspect\w+) \|", readme, re.M))
    assert listed == set(alert_rules(load_rules()))


def test_prometheus_config_is_valid_and_scrapes_the_job_the_rules_select() -> None:
    checked = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {scrape["job_name"] for scrape in config["scrape_configs"]}
    selected = {job for expr in rule_expressions() for job in re.findall(r'job="([^"]+)"', expr)}
    assert selected and selected <= jobs


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 30
    # promtool parses rule expressions: one recording rule per query, named after its place.
    as_rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": expr}
                    for index, expr in enumerate(queries.values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump(as_rules), encoding="utf-8")
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, (
        checked.stdout + checked.stderr + "\n" + "\n".join(f"{i}: {w}" for i, w in enumerate(queries))
    )


def test_rules_and_dashboard_name_only_metrics_the_inspector_exports() -> None:
    used = {
        name: where
        for where, expr in [*((f"rule: {e}", e) for e in rule_expressions()), *dashboard_queries().items()]
        for name in METRIC_NAME.findall(expr)
    }
    exported = exported_metric_names()
    unknown = {name: where for name, where in used.items() if name not in exported}
    assert not unknown, f"the rules or the dashboard name metrics the inspector does not export: {unknown}"
