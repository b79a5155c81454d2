"""The deploy files, checked offline: compose.yaml, the Kubernetes manifests, kubeconfig, policy.

* compose.yaml against the Compose Specification schema that check-jsonschema ships.
* Every document of deploy/kubernetes/*.yaml and deploy/verifier-cronjob.yaml against the
  Kubernetes schemas kubernetes-validate ships (strict: unknown fields fail), for each Kubernetes
  version docs/DEPLOY.md claims.
* The audit webhook kubeconfig and the audit policy loaded by k8s.io/apiserver's own loaders
  (tests/tools/auditclient check), as kube-apiserver loads --audit-webhook-config-file and
  --audit-policy-file at start.
* The Grafana dashboard deploy/grafana/sealtrail.json: it parses, and every metric its PromQL
  uses is one the code defines (names collected from the registries themselves).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealtrail.infra.errors import ConfigError
from tests.tools.auditclient_build import auditclient_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "sealtrail.json"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml")) + [DEPLOY / "verifier-cronjob.yaml"]
KUBECONFIG = DEPLOY / "kubernetes" / "audit-webhook-kubeconfig.yaml"
POLICY = DEPLOY / "kubernetes" / "audit-policy.yaml"

# The image's user (Dockerfile) and where the copy-secrets init containers read each Secret and
# write its owner-only copy (docs/DEPLOY.md, "Secret files and uid 10001").
IMAGE_UID = 10001
SECRETS = "/secrets"
COPIES = "/copies"

# The Kubernetes versions docs/DEPLOY.md claims (each is a schema set kubernetes-validate ships).
KUBERNETES_VERSIONS = ("1.34", "1.35", "1.36", "1.37")

# Files for the API server, not the cluster's API: no OpenAPI schema exists for them, so they
# are checked by the API server's own loaders (below) instead.
NOT_API_OBJECTS = {
    ("audit.k8s.io/v1", "Policy"): POLICY,
    ("v1", "Config"): KUBECONFIG,
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def test_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_name_the_checked_kubernetes_versions() -> None:
    deploy_doc = " ".join((ROOT / "docs" / "DEPLOY.md").read_text(encoding="utf-8").split())
    claimed = ", ".join(KUBERNETES_VERSIONS[:-1]) + f" and {KUBERNETES_VERSIONS[-1]}"
    assert claimed in deploy_doc, f"docs/DEPLOY.md should state the versions checked: {claimed}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_are_valid_kubernetes_objects(version: str) -> None:
    checked = 0
    for path in MANIFESTS:
        for doc in documents(path):
            api_kind = (doc.get("apiVersion"), doc.get("kind"))
            if api_kind in NOT_API_OBJECTS:
                assert NOT_API_OBJECTS[api_kind] == path  # checked by its loader below
                continue
            if api_kind == ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
                # kustomize's own file: every resource it names is one of the checked files.
                for resource in doc["resources"]:
                    assert (path.parent / resource) in MANIFESTS, resource
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                name = doc.get("metadata", {}).get("name")
                pytest.fail(f"{path.name}: {doc['kind']} {name}: {where}: {exc.message}")
            checked += 1
    assert checked >= 10  # the webhook, chainer, sink, verifier objects: none skipped silently


def _ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealtrail CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(auditclient_binary()), "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_webhook_kubeconfig_loads_as_the_api_server_loads_it(tmp_path: Path) -> None:
    # The CA file the kubeconfig names exists only on a control-plane node; a real CA
    # certificate at a temporary path stands in for it, every other byte is the shipped file.
    text = KUBECONFIG.read_text(encoding="utf-8")
    ca_path = documents(KUBECONFIG)[0]["clusters"][0]["cluster"]["certificate-authority"]
    assert text.count(ca_path) == 1
    ca = tmp_path / "ca.crt"
    ca.write_bytes(_ca_pem())
    config = tmp_path / "kubeconfig.yaml"
    config.write_text(text.replace(ca_path, str(ca)), encoding="utf-8")
    result = check("--kubeconfig", str(config))
    assert result.returncode == 0, result.stderr
    # The loader is the API server's: it refuses what kube-apiserver would refuse at start.
    config.write_text(text.replace(ca_path, str(tmp_path / "absent.crt")), encoding="utf-8")
    refused = check("--kubeconfig", str(config))
    assert refused.returncode == 1 and "unable to read certificate-authority" in refused.stderr


def test_audit_policy_loads_as_the_api_server_loads_it(tmp_path: Path) -> None:
    result = check("--policy", str(POLICY))
    assert result.returncode == 0, result.stderr
    bad = tmp_path / "policy.yaml"
    bad.write_text(POLICY.read_text(encoding="utf-8").replace("level: Metadata", "level: All", 1))
    refused = check("--policy", str(bad))
    assert refused.returncode == 1 and 'Unsupported value: "All"' in refused.stderr


def defined_metric_names() -> set[str]:
    """Every series the webhook, chainer, sink and ``sealtrail run`` can expose."""
    from prometheus_client.parser import text_string_to_metric_families

    from processors.chainer.metrics import ChainerMetrics
    from processors.chainer.options import ChainerStats
    from processors.sink.metrics import SinkMetrics
    from processors.sink.options import SinkStats
    from producers.webhook import _Metrics as WebhookMetrics
    from sealtrail.infra.config import Settings
    from sealtrail.infra.metrics import exposed_names
    from sealtrail.infra.service import StopFlag
    from sealtrail.supervisor import Child, Supervisor

    names = exposed_names(ChainerMetrics(ChainerStats()).registry)
    names |= exposed_names(SinkMetrics(SinkStats()).registry)
    names |= exposed_names(WebhookMetrics().registry)
    run_page = Supervisor(Settings(), [Child("chainer", [])], None, StopFlag()).metrics()
    names |= {s.name for f in text_string_to_metric_families(run_page) for s in f.samples}
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_grafana_dashboard_uses_only_metrics_the_code_defines() -> None:
    defined = defined_metric_names()
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    used: set[str] = set()
    for title, expr in exprs:
        names = set(re.findall(r"\bsealtrail_[a-z0-9_]+", expr))
        assert names, f"panel {title!r}: {expr} uses no sealtrail metric"
        assert not names - defined, f"panel {title!r} uses undefined {sorted(names - defined)}"
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), expr
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and "le" in expr, f"panel {title!r}: {expr}"
        used |= names
    # What operators need to see, per the dashboard's purpose (docs/METRICS.md).
    for needed in (
        "sealtrail_chainer_records_out_total",
        "sealtrail_sink_records_out_total",
        "sealtrail_chainer_consumer_lag",
        "sealtrail_sink_consumer_lag",
        "sealtrail_chainer_transaction_seconds_bucket",
        "sealtrail_sink_insert_duration_seconds_bucket",
        "sealtrail_chainer_checkpoint_age_seconds",
        "sealtrail_chainer_checkpoint_tree_size",
        "sealtrail_webhook_rejected_events_total",
        "sealtrail_sink_fast_path_fallbacks_total",
    ):
        assert needed in used, f"the dashboard shows no {needed}"


def test_docs_list_every_metric() -> None:
    """docs/METRICS.md names every metric family the code defines."""
    doc = (ROOT / "docs" / "METRICS.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(sealtrail_[a-z0-9_]+)", doc))
    families = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for name in defined_metric_names()
        if "_process_" not in name
    }
    missing = {f for f in families if f not in listed and f + "_total" not in listed}
    assert not missing, f"docs/METRICS.md does not list {sorted(missing)}"


# Which Kafka role (docs/SECURITY.md) each component logs in as in the deploy files.
COMPONENT_ROLES = {
    "webhook": "producer",
    "chainer": "chainer",
    "sink": "sink",
    "verifier": "verifier",
    "verify": "verifier",
    "export": "verifier",
}


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = documents(ROOT / "compose.yaml")[0]["services"]
    return services


def compose_secret_files(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """For each service, {path in its container: compose secret}: the secrets it mounts itself
    and the copies secrets-init made in the volumes it mounts."""
    init = services["secrets-init"]
    copy_volumes = {}
    for spec in init["volumes"]:
        volume, target = spec.split(":")
        assert Path(target).parent == Path(COPIES), spec
        copy_volumes[Path(target).name] = volume
    copied: dict[str, dict[str, str]] = {volume: {} for volume in copy_volumes.values()}
    for secret in init["secrets"]:
        target = Path(secret["target"])
        assert target.parent.parent == Path(SECRETS), secret
        copied[copy_volumes[target.parent.name]][target.name] = secret["source"]
    files: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        files[name] = {}
        for s in service.get("secrets", []):
            source, target = (s, s) if isinstance(s, str) else (s["source"], s.get("target"))
            path = target if target.startswith("/") else f"/run/secrets/{target}"
            files[name][path] = source
        if name != "secrets-init":
            for spec in service.get("volumes", []):
                volume, target = spec.split(":")[:2]
                for file, source in copied.get(volume, {}).items():
                    files[name][f"{target}/{file}"] = source
    return files


def test_compose_gives_each_component_its_own_kafka_credential() -> None:
    services = compose_services()
    kafka = services["kafka"]["environment"]
    assert "CLIENT:SASL_SSL" in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"].endswith(".StandardAuthorizer")
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    files = compose_secret_files(services)
    for name, service in services.items():
        kafka_secrets = {s for s in files[name].values() if s.startswith("kafka_")}
        if name in COMPONENT_ROLES:
            role = COMPONENT_ROLES[name]
            env = service["environment"]
            assert env["SEALTRAIL_KAFKA"] == "kafka:9092", name  # the SASL_SSL listener
            assert env["SEALTRAIL_KAFKA_CONFIG"] == f"/run/secrets/kafka_{role}", name
            assert files[name][env["SEALTRAIL_KAFKA_CONFIG"]] == f"kafka_{role}", name
            assert kafka_secrets == {f"kafka_{role}", "kafka_ca"}, name
        elif name not in ("kafka", "topics-init", "secrets-init"):  # the last only copies them
            assert not kafka_secrets, f"{name} holds Kafka credentials {kafka_secrets}"


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) of every Deployment, StatefulSet and CronJob."""
    pods = []
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] in ("Deployment", "StatefulSet"):
                pods.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
            elif doc["kind"] == "CronJob":
                template = doc["spec"]["jobTemplate"]["spec"]["template"]
                pods.append((doc["metadata"]["name"], template["spec"]))
    return pods


def copied_secret(pod: dict[str, Any], volume: str) -> str:
    """The Secret whose files the pod's copy-secrets init container copies into ``volume``."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[volume].get("emptyDir", {}).get("medium") == "Memory", volume
    (init,) = pod["initContainers"]
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    (directory,) = [Path(p).name for p, name in mounts.items() if name == volume]
    assert mounts[f"{COPIES}/{directory}"] == volume
    return str(volumes[mounts[f"{SECRETS}/{directory}"]]["secret"]["secretName"])


def test_kubernetes_workloads_each_mount_their_own_kafka_credential() -> None:
    docs = [doc for path in MANIFESTS for doc in documents(path)]
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    config = Path(settings["SEALTRAIL_KAFKA_CONFIG"])
    seen = set()
    for name, pod in pod_specs():
        for container in pod["containers"]:
            role = COMPONENT_ROLES[container["name"]]
            assert {"configMapRef": {"name": "sealtrail-settings"}} in container["envFrom"]
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            mount = mounts["kafka-client"]
            assert mount["mountPath"] == str(config.parent) and mount["readOnly"] is True
            secret = copied_secret(pod, "kafka-client")
            assert secret == f"sealtrail-kafka-{role}", (name, secret)
            seen.add(role)
    assert seen == {"producer", "chainer", "sink", "verifier"}
    text = " ".join(path.read_text(encoding="utf-8") for path in MANIFESTS)
    assert "sealtrail-kafka-admin" not in text  # the admin credential stays out of the cluster


def copy_script() -> str:
    """The shell script of every copy-secrets init container (one text for all)."""
    scripts = set()
    for name, pod in pod_specs():
        for init in pod.get("initContainers", []):
            assert init["command"][:2] == ["sh", "-c"] and len(init["command"]) == 3, name
            scripts.add(init["command"][2])
    (script,) = scripts
    return str(script)


def test_kubernetes_secrets_reach_uid_10001_only_as_owner_only_copies() -> None:
    """No container running as the image's user mounts a Secret: a root init container that
    may only chown and chmod copies each Secret into memory, owned by that user, mode 0600;
    sealtrail's owner-only checks refuse the 0440 files fsGroup would give (kubernetes#57923)."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert f"useradd --create-home --uid {IMAGE_UID} sealtrail" in dockerfile
    assert "\nUSER sealtrail\n" in dockerfile
    script = copy_script()
    assert f"install -o {IMAGE_UID} -g {IMAGE_UID} -m 0600 " in script
    checked = 0
    for name, pod in pod_specs():
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret_volumes = {n for n, v in volumes.items() if "secret" in v or "projected" in v}
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            context = container.get("securityContext", {})
            assert context.get("runAsUser", IMAGE_UID) == IMAGE_UID, (name, container["name"])
            assert context.get("runAsNonRoot", True) is True, (name, container["name"])
            for mount in container["volumeMounts"]:
                assert mount["name"] not in secret_volumes, (name, mount)
                if "emptyDir" in volumes[mount["name"]]:
                    assert mount["readOnly"] is True, (name, mount)
                    assert copied_secret(pod, mount["name"]).startswith("sealtrail-"), name
        # The one container that runs as root: it copies and may do nothing else.
        (init,) = pod["initContainers"]
        assert init["name"] == "copy-secrets" and init["image"] == pod["containers"][0]["image"]
        assert init["command"][2] == script
        context = init["securityContext"]
        assert context["runAsUser"] == 0 and context["runAsNonRoot"] is False, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        # CHOWN to give the copy to the image's user, FOWNER to chmod (and replace) a file it
        # no longer owns; root reads the 0400 Secret files as their owner, so no DAC_OVERRIDE.
        assert sorted(context["capabilities"]["add"]) == ["CHOWN", "FOWNER"], name
        mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
        copied = set()
        for path, mount in mounts.items():
            parent, directory = str(Path(path).parent), Path(path).name
            if parent == SECRETS:
                assert mount["name"] in secret_volumes and mount["readOnly"] is True, name
                assert mounts[f"{COPIES}/{directory}"]["name"] != mount["name"], name
                copied.add(mount["name"])
            else:
                assert parent == COPIES and "emptyDir" in volumes[mount["name"]], (name, path)
                assert f"{SECRETS}/{directory}" in mounts, (name, path)
        assert copied == secret_volumes, f"{name}: Secrets {secret_volumes - copied} not copied"
        checked += 1
    assert checked == 6  # webhook, chainer, sink, export, verify, verify-full


def run_copy_script(script: str, root: Path) -> list[list[str]]:
    """Run ``script`` with its /secrets and /copies under ``root``; ``install`` is wrapped to
    record its arguments and, unless this is root, to leave out the owner it may not give."""
    assert script.count(f"{SECRETS}/") == 1 and script.count(f"{COPIES}/") == 2, script
    bindir = root / "bin"
    bindir.mkdir()
    log = root / "install.log"
    real = shutil.which("install")
    assert real is not None
    wrapper = bindir / "install"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\0" "$@" >> {log}; echo >> {log}\n'
        + ("" if os.geteuid() == 0 else 'while [ "$1" = -o ] || [ "$1" = -g ]; do shift 2; done\n')
        + f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    here = script.replace(f"{SECRETS}/", f"{root}{SECRETS}/").replace(
        f"{COPIES}/", f"{root}{COPIES}/"
    )
    result = subprocess.run(
        ["sh", "-c", here],
        capture_output=True,
        text=True,
        env={"PATH": f"{bindir}:/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [line.rstrip("\0").split("\0") for line in log.read_text().split("\n") if line]


def secret_volume(directory: Path, files: dict[str, bytes]) -> None:
    """A Secret volume as the kubelet writes it: the files in a timestamped directory, ..data
    pointing at it, and one symlink per key through ..data; mode 0400."""
    stamp = directory / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    (directory / "..data").symlink_to(stamp.name)
    for name, data in files.items():
        (stamp / name).write_bytes(data)
        (stamp / name).chmod(0o400)
        (directory / name).symlink_to(f"..data/{name}")


def test_copy_script_gives_sealtrail_owner_only_files(tmp_path: Path) -> None:
    from processors.integrity.keys import load_signer, write_keypair
    from producers.webhook import load_tokens

    private, _ = write_keypair("sealtrail.example.com/log", tmp_path / "keys")
    files = {
        "signing": {"sealtrail.key": private.read_bytes()},
        "tokens": {"tokens.txt": b"0123456789abcdef0123456789abcdef prod\n"},
        "kafka-client": {"client.properties": b"sasl.password=x\n", "ca.crt": b"CA\n"},
    }
    for directory, content in files.items():
        secret_volume(tmp_path / SECRETS.strip("/") / directory, content)
        (tmp_path / COPIES.strip("/") / directory).mkdir(parents=True)
    stale = tmp_path / COPIES.strip("/") / "tokens" / "old-tokens.txt"
    stale.write_bytes(b"a removed key\n")
    calls = run_copy_script(copy_script(), tmp_path)
    assert len(calls) == 4  # one per key: not ..data, not the timestamped directory
    for call in calls:
        assert call[:6] == ["-o", str(IMAGE_UID), "-g", str(IMAGE_UID), "-m", "0600"], call
    assert not stale.exists()  # a key no longer in the Secret leaves no copy behind
    for directory, content in files.items():
        copies = tmp_path / COPIES.strip("/") / directory
        assert sorted(p.name for p in copies.iterdir()) == sorted(content)
        for name, data in content.items():
            info = (copies / name).lstat()
            assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
            if os.geteuid() == 0:
                assert (info.st_uid, info.st_gid) == (IMAGE_UID, IMAGE_UID)
            assert (copies / name).read_bytes() == data
    # sealtrail's owner-only checks accept the copies (and refuse what fsGroup would give).
    copies = tmp_path / COPIES.strip("/")
    assert load_tokens(copies / "tokens" / "tokens.txt", None)
    load_signer(copies / "signing" / "sealtrail.key")
    (copies / "tokens" / "tokens.txt").chmod(0o440)
    with pytest.raises(ConfigError, match="readable by group or others"):
        load_tokens(copies / "tokens" / "tokens.txt", None)


def test_compose_services_read_their_credentials_from_owner_only_copies() -> None:
    """A file secret keeps the host file's owner and mode (docker/compose#9648), so the
    sealtrail services (the image's uid 10001) mount none: secrets-init, the only sealtrail
    container run as root, copies each into the reader's volume, owned by 10001, mode 0600."""
    services = compose_services()
    files = compose_secret_files(services)
    init = services["secrets-init"]
    assert init["build"] == "." and init["user"] == "0:0"
    assert init["entrypoint"] == ["sh", "-c"] and len(init["command"]) == 1
    script = init["command"][0]
    assert "$" not in script.replace("$$", ""), "compose would interpolate a single $"
    assert script.replace("$$", "$") == copy_script()  # the Kubernetes init containers' script
    assert init["cap_drop"] == ["ALL"]
    # DAC_READ_SEARCH: root reads a 0600 file the host user owns, without write access.
    assert sorted(init["cap_add"]) == ["CHOWN", "DAC_READ_SEARCH", "FOWNER"]
    assert init["security_opt"] == ["no-new-privileges:true"]
    assert init["read_only"] is True and init["network_mode"] == "none"
    assert init["restart"] == "no" and "depends_on" not in init and "ports" not in init
    copy_volumes = {spec.split(":")[0] for spec in init["volumes"]}
    readers: dict[str, list[str]] = {volume: [] for volume in copy_volumes}
    sealtrail = [n for n, s in services.items() if s.get("build") == "." and n != "secrets-init"]
    assert sorted(sealtrail) == ["chainer", "sink", "topics-init", "verifier", "webhook"]
    for name in sealtrail:
        service = services[name]
        assert "user" not in service, name  # the image's USER sealtrail (uid 10001)
        assert "secrets" not in service, f"{name} mounts a host-owned secret file"
        assert service["depends_on"]["secrets-init"] == {
            "condition": "service_completed_successfully"
        }, name
        for spec in service.get("volumes", []):
            volume, *_, mode = spec.split(":")
            if volume in copy_volumes:
                assert mode == "ro", (name, spec)
                readers[volume].append(name)
        # Every path under /run it is given (environment, command, healthcheck) is a copy.
        text = json.dumps([service.get("environment"), service.get("command")])
        text += json.dumps(service.get("healthcheck", {}))
        for path in set(re.findall(r"/run/[A-Za-z0-9_./-]+", text)):
            assert any(f == path or f.startswith(path + "/") for f in files[name]), (name, path)
        assert files[name], name
    assert all(len(names) == 1 for names in readers.values()), readers  # one reader each
    assert {n for n, s in services.items() if "secrets" in s} == {"secrets-init", "kafka"}
    # The broker (its own image and user) mounts its files itself; every secret is used.
    declared = set(documents(ROOT / "compose.yaml")[0]["secrets"])
    used = {s for name in services for s in files[name].values()}
    assert used == declared
    # topics-init sees every role's client file where 'acls users --out' reads them.
    clients = {p for p in files["topics-init"] if p.startswith("/run/kafka-clients/")}
    roles = ["admin", "producer", "chainer", "sink", "verifier"]
    assert clients == {f"/run/kafka-clients/{role}.properties" for role in roles}
