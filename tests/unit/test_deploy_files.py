"""The deployment files in deploy/ stay in step with the code: metrics, keys, tables, settings."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from orchestrator import metrics
from orchestrator.keys import WORKER_GROUP, Keys
from orchestrator.settings import WorkerSettings
from orchestrator.store.tables import metadata

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SCRAPE_LABELS = {"job", "instance"}


def load(path: Path) -> ModuleType:
    """A module from deploy/ (not a package), imported by path."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"deploy_{path.stem}", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


queries_module = load(DEPLOY / "monitoring_queries.py")
QUERIES = queries_module.all_queries()


def defined_series() -> dict[str, set[str]]:
    """Every sample name orchestrator/metrics.py exports → the labels it carries."""
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, Counter | Gauge | Histogram):
            continue
        name, labels = value._name, set(value._labelnames)
        if isinstance(value, Counter):
            series[f"{name}_total"] = labels
        elif isinstance(value, Histogram):
            series.update({f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels})
        else:
            series[name] = labels
    return series


SERIES = defined_series()


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
    assert len(files) >= 15
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"


def test_committed_dashboards_are_what_generate_py_renders() -> None:
    try:
        generate = load(DEPLOY / "grafana" / "generate.py")
    except ModuleNotFoundError as e:
        pytest.fail(f"{e}: install the dev dependencies (pip install -e '.[dev]') to render the dashboards")
    rendered = generate.render()
    committed = {p.name: p.read_text() for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert set(rendered) == set(committed) == {"overview.json", "queues-workers.json", "failures.json"}
    stale = [name for name, text in rendered.items() if committed[name] != text]
    assert not stale, f"{stale} out of date: run `python deploy/grafana/generate.py` and commit the JSON"


def test_queries_read_only_series_and_labels_of_orchestrator_metrics() -> None:
    problems = []
    for q in QUERIES:
        names = queries_module.series_names(q.expr)
        if not names:
            problems.append(f"{q.source} {q.name}: reads no steppe_ series")
        problems += [f"{q.source} {q.name}: unknown series {n}" for n in sorted(names - set(SERIES))]
        known = set().union(*(SERIES.get(n, set()) for n in names)) | SCRAPE_LABELS
        for series, label in queries_module.matcher_labels(q.expr):
            if label not in SERIES.get(series, set()) | SCRAPE_LABELS:
                problems.append(f"{q.source} {q.name}: {series} has no label {label!r}")
        problems += [
            f"{q.source} {q.name}: groups by {label!r}, which none of {sorted(names)} has"
            for label in sorted(queries_module.grouping_labels(q.expr) - known)
        ]
    assert not problems, "\n".join(problems)


def test_every_metric_appears_on_a_dashboard() -> None:
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in SERIES}
    dashboard_series = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for q in QUERIES
        if q.source.endswith(".json")
        for name in queries_module.series_names(q.expr)
    }
    assert families - dashboard_series == set(), "metrics without a panel"


def test_queries_select_the_scrape_jobs_that_prometheus_yml_defines() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    used = {job for q in QUERIES for job in re.findall(r'job="([^"]+)"', q.expr)}
    assert used == {"steppe-coordinator", "steppe-worker"}
    assert used <= jobs
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_dashboards_have_unique_uids_ids_and_a_datasource_variable() -> None:
    uids = []
    for path in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        doc = json.loads(path.read_text())
        uids.append(doc["uid"])
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids)), path.name
        assert any(v["name"] == "datasource" and v["type"] == "datasource" for v in doc["templating"]["list"])
        for panel in doc["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", (path.name, panel["title"])
    assert len(uids) == len(set(uids)) == 3


@pytest.mark.parametrize(
    ("expr", "signal"),
    [
        ("max(x) > 300", "max(x) > bool 300"),
        ('max by (queue) (x{a!="b>c"}) == 2', 'max by (queue) (x{a!="b>c"}) == bool 2'),
        ('time() - y{job="c"} > 60', 'time() - y{job="c"} > bool 60'),
        ('absent(y{job="c"})', 'y{job="c"}'),
        ("max(x) < bool 1", "max(x) < bool 1"),
        ("sum(rate(x[5m]))", "sum(rate(x[5m]))"),
    ],
)
def test_alert_signal_keeps_the_series_an_alert_measures(expr: str, signal: str) -> None:
    assert queries_module.signal(expr) == signal


def test_grafana_variables_are_substituted() -> None:
    expr = 'rate(x{queue=~"$queue", q2=~"${queue}"}[$__rate_interval]) / $__range_s'
    assert queries_module.substitute(expr, {"queue": ".*"}) == 'rate(x{queue=~".*", q2=~".*"}[1m]) / 300'


# -- Redis ACL ----------------------------------------------------------------------------------------


def acl_users() -> dict[str, list[str]]:
    lines = (DEPLOY / "redis" / "users.acl").read_text().splitlines()
    return {line.split()[1]: line.split()[2:] for line in lines if line.strip()}


def acl_groups(rules: list[str]) -> list[tuple[list[str], set[str]]]:
    """(key patterns, granted commands) of the root permissions and of each `(…)` selector."""
    groups: list[tuple[list[str], set[str]]] = [([], set())]
    current = groups[0]
    for rule in rules:
        if rule.startswith("("):
            current = ([], set())
            groups.append(current)
        word = rule.strip("()")
        if word.startswith("~"):
            current[0].append(word[1:])
        elif word.startswith("+"):
            current[1].add(word[1:])
        if rule.endswith(")"):
            current = groups[0]
    return groups


def key_allowed(rules: list[str], key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for patterns, _ in acl_groups(rules) for p in patterns)


def command_allowed(rules: list[str], command: str, key: str) -> bool:
    """Whether one group grants `command` on `key` (as Redis 7 decides for a one-key command)."""
    return any(
        command in commands and any(fnmatch.fnmatchcase(key, p) for p in patterns)
        for patterns, commands in acl_groups(rules)
    )


def test_default_redis_user_is_disabled_and_others_start_from_nothing() -> None:
    users = acl_users()
    assert users["default"][0] == "off"
    for name, rules in users.items():
        assert "-@all" in rules, name
        grants = [r for r in rules if r.startswith("+")]
        assert rules.index("-@all") < rules.index(grants[0]) if grants else True
        dangerous = {"+@all", "+@admin", "+@dangerous", "+flushall", "+flushdb", "+keys", "+config", "+acl"}
        assert not dangerous & set(rules), name
        assert not any(r in ("~*", "allkeys") for r in rules), name


def test_worker_acl_reaches_its_keys_and_no_coordinator_keys() -> None:
    keys = Keys("steppe")
    worker = acl_users()["steppe-worker"]
    mine = [
        *keys.queue_streams("default"), keys.results_stream(3), keys.dlq_stream, keys.workers,
        keys.worker("w1"), keys.cancelled, keys.breaker("payments-api"),
    ]  # fmt: skip
    theirs = [keys.control_stream(0), keys.coordinators, keys.coordinator("c1"), keys.epoch]
    assert all(key_allowed(worker, k) for k in mine)
    assert not any(key_allowed(worker, k) for k in theirs)
    coordinator = acl_users()["steppe-coordinator"]
    breakers = keys.breaker("payments-api")  # only workers decide a breaker's state
    assert all(key_allowed(coordinator, k) for k in mine + theirs if k != breakers)
    assert not key_allowed(coordinator, breakers)
    assert {"+xreadgroup", "+xack", "+xclaim", "+multi", "+exec"} <= set(worker)
    assert "+xtrim" not in worker
    assert "+config|get" in coordinator
    # Key by key, not only command by command (tests/integration/test_redis_acl.py proves it live).
    queue, results = keys.queue_stream("default"), keys.results_stream(0)
    assert command_allowed(worker, "xreadgroup", queue)
    assert command_allowed(worker, "xadd", results)
    assert not command_allowed(worker, "xadd", queue), "a worker could forge steps"
    assert not command_allowed(worker, "del", queue)
    assert not command_allowed(worker, "set", keys.breaker("payments-api"))
    assert command_allowed(worker, "hset", keys.breaker("payments-api"))
    assert command_allowed(coordinator, "xadd", queue)
    assert not command_allowed(coordinator, "xreadgroup", queue), "a coordinator could take steps"
    assert not command_allowed(coordinator, "hset", keys.breaker("payments-api"))


def test_acl_password_hashes_match_the_compose_defaults() -> None:
    compose = (DEPLOY / "docker-compose.yml").read_text()
    for user, variable in (
        ("steppe-coordinator", "REDIS_COORDINATOR_PASSWORD"),
        ("steppe-worker", "REDIS_WORKER_PASSWORD"),
    ):
        default = re.search(r"\$\{" + variable + r":-([^}]+)\}", compose)
        assert default, variable
        digest = hashlib.sha256(default.group(1).encode()).hexdigest()
        assert f"#{digest}" in acl_users()[user], user


# -- PostgreSQL roles ---------------------------------------------------------------------------------


def test_roles_sql_grants_dml_on_every_table_and_no_ddl_to_the_app() -> None:
    sql = (DEPLOY / "postgres" / "roles.sql").read_text()
    listed = set(re.findall(r"'([a-z_]+)'", sql[sql.index("FOREACH tbl") :]))
    assert set(metadata.tables) <= listed, "add the new tables to deploy/postgres/roles.sql"
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO steppe_app" in sql
    app_grants = re.findall(r"GRANT ([^;']+?) TO steppe_app", sql)
    assert app_grants
    assert not any(re.search(r"\b(ALL|CREATE|TRUNCATE|TRIGGER|REFERENCES)\b", g) for g in app_grants)


# -- compose, Kubernetes, systemd ---------------------------------------------------------------------


def drain_timeout() -> float:
    return WorkerSettings().drain_timeout


def test_compose_stack_has_every_piece() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "coordinator", "worker", "prometheus", "grafana"} <= set(services)
    assert services["migrate"]["command"] == ["db", "upgrade"]
    worker = services["worker"]
    assert worker["deploy"]["replicas"] >= 1
    assert "STEPPE_DATABASE_URL" not in worker["environment"], "workers need Redis only"
    assert float(worker["stop_grace_period"].rstrip("s")) > float(worker["environment"]["STEPPE_WORKER__DRAIN_TIMEOUT"])
    redis_conf = (DEPLOY / "redis" / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", redis_conf, re.M)
    assert re.search(r"^maxmemory-policy noeviction$", redis_conf, re.M)
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


def test_keda_scales_workers_on_the_worker_group_of_the_default_queue() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "keda-scaledobject.yaml").read_text()))
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "steppe-worker"
    assert scaled["spec"]["minReplicaCount"] >= 1  # pending entries stay 0 without a reader
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    assert {t["metadata"]["stream"] for t in triggers} == set(Keys("steppe").queue_streams("default"))
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {WORKER_GROUP}
    keda = acl_users()["steppe-keda"]
    assert all(key_allowed(keda, t["metadata"]["stream"]) for t in triggers)
    assert "+xpending" in keda


def test_kubernetes_workers_get_more_grace_than_their_drain_timeout() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    assert all((DEPLOY / "kubernetes" / r).exists() for r in kustomization["resources"])
    config = yaml.safe_load((DEPLOY / "kubernetes" / "config.yaml").read_text())
    worker = yaml.safe_load((DEPLOY / "kubernetes" / "worker.yaml").read_text())
    pod = worker["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > float(config["data"]["STEPPE_WORKER__DRAIN_TIMEOUT"])
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "STEPPE_DATABASE_URL" not in env


def unit(path: Path) -> dict[str, str]:
    """key=value lines of a unit or environment file; a repeated key keeps its first value."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, value)
    return found


def test_systemd_worker_template_drains_on_sigterm_within_its_stop_timeout() -> None:
    worker = unit(DEPLOY / "systemd" / "steppe-worker@.service")
    env = unit(DEPLOY / "systemd" / "steppe.env.example")
    assert worker["KillSignal"] == "SIGTERM"
    assert float(worker["TimeoutStopSec"]) > float(env["STEPPE_WORKER__DRAIN_TIMEOUT"]) >= 1
    assert float(worker["TimeoutStopSec"]) > drain_timeout()
    assert worker["EnvironmentFile"].startswith("/etc/steppe/")
    assert "%i" in worker["ExecStart"]
    coordinator = unit(DEPLOY / "systemd" / "steppe-coordinator.service")
    assert coordinator["KillSignal"] == "SIGTERM"
    assert coordinator["ExecStart"].endswith("coordinator --metrics-port ${STEPPE_COORDINATOR_METRICS_PORT}")
