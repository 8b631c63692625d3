"""deploy/k8s as Kubernetes and the operators would take it, checked offline.

Each kustomization is rendered with ``kubectl kustomize`` (Debian's kubernetes-client), then every resource is
validated against the Kubernetes schemas (kubernetes-validate, strict: an unknown field fails) or, for the
operators' kinds, against their CRDs' schemas vendored in deploy/k8s/schemas. Then what matters to an
operator: limits everywhere, no secret in the repository, pinned images, probes on real routes, settings the
portal really reads and accepts, commands the CLI really has, workers scaled on the queue the actors use.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml

from portal import __version__
from portal.cli.main import app as cli
from portal.config import ENV_PREFIX, PROJECT_ROOT, Settings
from tests.conftest import require_program

K8S = PROJECT_ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
KUSTOMIZATIONS = ["base", "overlays/production"]
# The oldest Kubernetes the manifests are written for (autoscaling/v2, policy/v1, batch/v1 TTLs).
KUBERNETES_VERSION = "1.27"
PORTAL_IMAGE = "gpu-portal"
# Environment names a portal container may carry that are not PORTAL_ settings, and who reads them.
OTHER_READERS = {"PGPASSWORD": "libpq, for the database URL's user", "GRANIAN_WORKERS": "portal run"}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|KEY(PAIR)?$|CA_KEY|CREDENTIAL", re.IGNORECASE)
WORKLOADS = {"Deployment", "StatefulSet", "Job"}


def render(kustomization: str) -> list[dict[str, Any]]:
    kubectl = require_program("kubectl", "kubernetes-client")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the vendored schema, from names like keda.sh_scaledobject_v1alpha1.json."""
    found = {}
    for path in SCHEMAS.glob("*.json"):
        group, kind, version = path.stem.split("_")
        found[(f"{group}/{version}", kind)] = json.loads(path.read_text())
    return found


def closed(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation does (a CRD's
    structural schema prunes them silently, which would hide a misspelt field)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def validate(resource: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
    key = (resource["apiVersion"], resource["kind"].lower())
    if key in schemas:
        # Top-level apiVersion, kind and metadata are the API server's; the CRD schema describes the rest.
        schema = closed(schemas[key])
        schema["properties"] |= {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
        schema["properties"]["metadata"] = {"type": "object"}
        jsonschema.Draft7Validator(schema).validate(resource)
    else:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def pod_specs(resources: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for resource in resources:
        if resource["kind"] in WORKLOADS:
            yield resource["metadata"]["name"], resource["spec"]["template"]["spec"]
        elif resource["kind"] == "Pooler":
            yield resource["metadata"]["name"], resource["spec"].get("template", {}).get("spec", {})


def containers(resources: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in pod_specs(resources):
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            yield f"{name}/{container['name']}", container


def portal_containers(resources: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, container in containers(resources):
        if container.get("image", "").rsplit(":", 1)[0].endswith(PORTAL_IMAGE):
            yield name, container


def one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def config(resources: list[dict[str, Any]]) -> dict[str, str]:
    (found,) = [
        r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("portal-config")
    ]
    return found["data"]


def environment(resources: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """What the container's process would see, with a placeholder for each secret and $(VAR) expanded as the
    kubelet does."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= config(resources) if source["configMapRef"]["name"].startswith("portal-config") else {}
    placeholders = {
        "secret-key": "k" * 64,
        "token": "t" * 64,
        "password": "p4ssw0rd",
        "connection_string": "amqp://user:p4ssw0rd@portal-rabbitmq.gpu-portal.svc:5672/",
    }
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry["value"])
            continue
        secret = entry["valueFrom"]["secretKeyRef"]
        if secret.get("optional"):
            continue  # an operator's choice; without it the portal runs as documented
        env[entry["name"]] = placeholders.get(secret["key"], "")
    return env


# --- the schemas -----------------------------------------------------------------------------------


def test_every_resource_validates_against_kubernetes_or_its_operators_schema(rendered):
    schemas = crd_schemas()
    for resource in rendered:
        try:
            validate(resource, schemas)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as error:
            where = ".".join(map(str, error.path))
            pytest.fail(f"{resource['kind']}/{resource['metadata']['name']}: {where}: {error.message}")
    kinds = {resource["kind"] for resource in rendered}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job"} <= kinds
    assert {"ScaledObject", "TriggerAuthentication", "Cluster", "RabbitmqCluster", "StatefulSet"} <= kinds


def test_the_validation_refuses_a_misspelt_field_and_a_wrong_type():
    """The checks above are not vacuous: a typo in a Kubernetes kind and in each operator's kind fails."""
    schemas = crd_schemas()
    resources = render("overlays/production")
    mistakes = [
        ("Deployment", "portal", lambda r: r["spec"].update(replica=3)),
        ("ScaledObject", "portal-worker", lambda r: r["spec"].update(maxReplicaCount="many")),
        ("Cluster", "portal-db", lambda r: r["spec"]["storage"].update(sise="1Gi")),
        ("RabbitmqCluster", "portal-rabbitmq", lambda r: r["spec"].update(replica=3)),
        ("Pooler", "portal-db-pooler-rw", lambda r: r["spec"]["pgbouncer"].update(poolMode="sometimes")),
    ]
    for kind, name, spoil in mistakes:
        resource = copy.deepcopy(one(resources, kind, name))
        validate(resource, schemas)
        spoil(resource)
        with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
            validate(resource, schemas)


# --- what an operator relies on --------------------------------------------------------------------


def test_every_container_and_data_service_has_requests_and_limits(rendered):
    for name, container in containers(rendered):
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= resources.get(bound, {}).keys(), f"{name} has no {bound}"
    for resource in rendered:
        if resource["kind"] in {"Cluster", "RabbitmqCluster"}:
            limits = resource["spec"]["resources"]["limits"]
            assert {"cpu", "memory"} <= limits.keys(), resource["metadata"]["name"]


def test_no_secret_is_written_in_the_manifests(rendered):
    assert not [r for r in rendered if r["kind"] == "Secret"], "secrets are created apart, never shipped"
    for name, container in containers(rendered):
        for entry in container.get("env", []):
            if SECRET_NAME.search(entry["name"]):
                assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name}: {entry['name']} is a literal"
            value = entry.get("value", "")
            userinfo = urlsplit(value).netloc.rpartition("@")[0] if "://" in value else ""
            # A URL may carry a password only as a reference the kubelet fills from a secret.
            assert ":" not in userinfo or re.fullmatch(r"[^:]*:\$\(\w+\)", userinfo), f"{name}: {value}"
    for key, value in config(rendered).items():
        assert not SECRET_NAME.search(key), key
        if "://" in value:
            assert ":" not in urlsplit(value).netloc.rpartition("@")[0], f"{key} carries a password"
    text = "\n".join(path.read_text() for path in K8S.rglob("*.yaml"))
    assert "PRIVATE KEY" not in text and "BEGIN" not in text


def test_images_are_pinned_and_the_portal_is_this_release(rendered):
    poolers = {r["metadata"]["name"] for r in rendered if r["kind"] == "Pooler"}
    images = []
    for name, container in containers(rendered):
        if "image" in container:
            images.append(container["image"])
        else:  # a Pooler's PgBouncer is the image its CloudNativePG release pins
            assert name.split("/")[0] in poolers, f"{name} names no image"
    images += [r["spec"]["imageName"] for r in rendered if r["kind"] == "Cluster"]
    images += [r["spec"]["image"] for r in rendered if r["kind"] == "RabbitmqCluster"]
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in {"", "latest"}, f"{image} is not pinned"
    portal_images = {container["image"] for _, container in portal_containers(rendered)}
    assert portal_images and {image.rpartition(":")[2] for image in portal_images} == {__version__}


def test_probes_ask_the_routes_the_portal_serves_on_its_port(rendered, api_client):
    portal = one(rendered, "Deployment", "portal")
    (container,) = portal["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == int(config(rendered)["PORTAL_PORT"])
    probes = {
        kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        # The portal's own app answers them (on SQLite, an in-process cache and broker here).
        assert probe["port"] in ports and api_client.get(probe["path"]).status_code == 200, probe
    service = one(rendered, "Service", "portal")
    assert service["spec"]["selector"].items() <= portal["spec"]["template"]["metadata"]["labels"].items()
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


def test_every_environment_name_is_a_setting_the_portal_reads(rendered):
    settings = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    names = set(config(rendered))
    for name, container in portal_containers(rendered):
        entries = container.get("env", [])
        for position, entry in enumerate(entries):
            later = " ".join(e.get("value", "") for e in entries[position + 1 :])
            if entry["name"].startswith(ENV_PREFIX):
                names.add(entry["name"])
            else:
                # Otherwise read by another program, or only a part of a later value ($(NAME)).
                assert entry["name"] in OTHER_READERS or f"$({entry['name']})" in later, f"{name}: {entry}"
    assert names <= settings, f"not settings of the portal: {sorted(names - settings)}"


def test_every_portal_container_starts_with_settings_the_portal_accepts(rendered, monkeypatch):
    for name, container in portal_containers(rendered):
        for variable in [v for v in Settings.model_fields]:
            monkeypatch.delenv(f"{ENV_PREFIX}{variable.upper()}", raising=False)
        for variable, value in environment(rendered, container).items():
            monkeypatch.setenv(variable, value)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.environment == "production", name
        assert urlsplit(settings.sqlalchemy_url).scheme == "postgresql+psycopg", name
        if container["command"][1] in {"run", "worker"}:
            assert settings.redis_url and settings.broker_url, f"{name} would run embedded parts"
        if container["command"][1] == "run" and settings.mesh == "nebula":
            # portal run then starts the portal's overlay node, its only way to the heads: a TUN device.
            added = container.get("securityContext", {}).get("capabilities", {}).get("add", [])
            assert "NET_ADMIN" in added, f"{name}: the overlay is on but the portal's node cannot start"
        if container["command"][1] == "mesh":
            assert settings.mesh == "nebula" and settings.lighthouses, name


def test_commands_are_ones_the_portal_cli_has(rendered):
    commands = typer.main.get_command(cli)
    used = {tuple(container["command"]) for _, container in portal_containers(rendered)}
    assert {command[:2] for command in used} == {
        ("portal", "run"),
        ("portal", "worker"),
        ("portal", "db"),
        ("portal", "mesh"),
    }
    for command in used:
        group = commands
        words = [word for word in command[1:] if not word.startswith("-")]
        for word in words[:2]:
            if not hasattr(group, "commands"):
                break
            assert word in group.commands, f"portal has no {' '.join(command)}"  # type: ignore[attr-defined]
            group = group.commands[word]  # type: ignore[attr-defined]
        options = {opt for param in group.params for opt in [*param.opts, *param.secondary_opts]}
        assert {word for word in command if word.startswith("--")} <= options, command


def test_workers_scale_on_the_queue_every_actor_uses(rendered):
    import tasks

    queues = {actor.queue_name for actor in tasks.broker.actors.values()}
    scaled = one(rendered, "ScaledObject", "portal-worker")
    target = one(rendered, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    (worker,) = target["spec"]["template"]["spec"]["containers"]
    assert worker["command"] == ["portal", "worker"] and "replicas" not in target["spec"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq" and {trigger["metadata"]["queueName"]} == queues
    auth = one(rendered, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (host,) = auth["spec"]["secretTargetRef"]
    broker = next(e for e in worker["env"] if e["name"] == "PORTAL_BROKER_URL")["valueFrom"]["secretKeyRef"]
    # KEDA counts the very queue the workers consume: the same server, from the same secret.
    assert host["parameter"] == "host" and (host["name"], host["key"]) == (broker["name"], broker["key"])


def test_migrations_go_to_the_primary_and_production_portals_through_pgbouncer(rendered):
    (job,) = one(rendered, "Job", "portal-migrate")["spec"]["template"]["spec"]["containers"]
    assert job["command"] == ["portal", "db", "upgrade"]
    assert urlsplit(environment(rendered, job)["PORTAL_DATABASE_URL"]).hostname == "portal-db-rw"
    poolers = [r for r in rendered if r["kind"] == "Pooler"]
    portal_database = urlsplit(config(rendered)["PORTAL_DATABASE_URL"]).hostname
    if not poolers:
        assert portal_database == "portal-db-rw"
        return
    (pooler,) = poolers
    assert pooler["spec"]["pgbouncer"]["poolMode"] == "transaction"
    assert pooler["spec"]["cluster"]["name"] == "portal-db" and portal_database == pooler["metadata"]["name"]
    assert config(rendered)["PORTAL_DB_TRANSACTION_POOLER"] == "true"


def test_the_lighthouse_serves_the_overlays_udp_port_to_the_internet(rendered):
    (container,) = one(rendered, "Deployment", "portal-lighthouse")["spec"]["template"]["spec"]["containers"]
    port = int(container["command"][container["command"].index("--port") + 1])
    assert container["ports"] == [{"name": "nebula", "containerPort": port, "protocol": "UDP"}]
    service = one(rendered, "Service", "portal-lighthouse")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"][0] | {"name": "nebula"} == {
        "name": "nebula",
        "port": 4242,
        "targetPort": "nebula",
        "protocol": "UDP",
    }
    settings = json.loads(config(rendered)["PORTAL_LIGHTHOUSES"])
    assert settings[0]["public_address"].endswith(f":{service['spec']['ports'][0]['port']}")


def test_prometheus_scrapes_the_portal_service_with_the_metrics_token(rendered):
    scrape_config = one(rendered, "ConfigMap", "prometheus-portal-scrape")
    scrape = yaml.safe_load(scrape_config["data"]["prometheus.yml"])
    (job,) = [job for job in scrape["scrape_configs"] if job["job_name"] == "portal"]
    service = one(rendered, "Service", "portal")
    assert job["static_configs"][0]["targets"] == [f"portal:{service['spec']['ports'][0]['port']}"]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["credentials_file"]


def test_every_disruption_budget_autoscaler_and_service_finds_its_pods(rendered):
    labels = {
        resource["metadata"]["name"]: resource["spec"]["template"]["metadata"]["labels"]
        for resource in rendered
        if resource["kind"] in WORKLOADS
    }
    for resource in rendered:
        kind, spec = resource["kind"], resource.get("spec", {})
        if kind == "HorizontalPodAutoscaler":
            assert spec["scaleTargetRef"]["name"] in labels
        elif kind == "PodDisruptionBudget":
            assert any(spec["selector"]["matchLabels"].items() <= pod.items() for pod in labels.values())
        elif kind == "Service":
            assert any(spec["selector"].items() <= pod.items() for pod in labels.values()), resource


def test_the_ingress_serves_the_public_url_from_the_portal_service(rendered):
    ingresses = [r for r in rendered if r["kind"] == "Ingress"]
    if not ingresses:
        return  # the base leaves the way in to the operator
    (ingress,) = ingresses
    public = urlsplit(config(rendered)["PORTAL_PUBLIC_URL"])
    (rule,) = ingress["spec"]["rules"]
    assert public.scheme == "https" and rule["host"] == public.hostname
    assert public.hostname in ingress["spec"]["tls"][0]["hosts"]
    (path,) = rule["http"]["paths"]
    service = one(rendered, "Service", path["backend"]["service"]["name"])
    assert path["backend"]["service"]["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}
    # Websockets (the pages) and long-polls (the agents) outlive a proxy's default 60 s read.
    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
