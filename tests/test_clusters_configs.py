"""The cluster configs parse and use only fields their consumers know.

* Ray cluster-launcher YAML: validated against Ray's own ``ray-schema.json`` (jsonschema),
  after Ray's own default fill-in, and every AWS ``node_config`` key against EC2 RunInstances.
* KubeRay manifests: every key checked against the ray.io/v1 CRD field lists (RayCluster,
  RayJob) and the Kubernetes PodTemplateSpec fields they embed, written out below.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"

# --- Ray cluster launcher ----------------------------------------------------------------

# boto3 EC2.ServiceResource.create_instances / RunInstances request fields used in node_config.
EC2_RUN_INSTANCES_FIELDS = {
    "BlockDeviceMappings", "ImageId", "InstanceType", "Ipv6AddressCount", "KernelId", "KeyName",
    "MaxCount", "MinCount", "Monitoring", "Placement", "RamdiskId", "SecurityGroupIds",
    "SecurityGroups", "SubnetId", "SubnetIds", "UserData", "IamInstanceProfile", "EbsOptimized",
    "InstanceMarketOptions", "NetworkInterfaces", "TagSpecifications", "LaunchTemplate",
    "MetadataOptions", "CpuOptions", "CapacityReservationSpecification",
}
EC2_BLOCK_DEVICE_FIELDS = {"DeviceName", "Ebs", "NoDevice", "VirtualName"}
EC2_EBS_FIELDS = {"DeleteOnTermination", "Iops", "SnapshotId", "VolumeSize", "VolumeType", "KmsKeyId",
                  "Throughput", "OutpostArn", "Encrypted"}


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _launcher_files() -> list[Path]:
    files = sorted((CLUSTERS / "launcher").glob("*.yaml"))
    assert files, "no cluster-launcher YAML under clusters/launcher"
    return files


@pytest.mark.parametrize("path", _launcher_files(), ids=lambda p: p.name)
def test_launcher_yaml_matches_ray_schema(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    jsonschema.validate(cfg, _ray_schema())  # additionalProperties: false at the top level
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = [t for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "at least one GPU worker node type"
    assert len({t["resources"]["GPU"] for t in gpu_types}) >= 1
    for name, t in types.items():
        bad = set(t["node_config"]) - EC2_RUN_INSTANCES_FIELDS
        assert not bad, f"{name}: node_config keys EC2 does not know: {bad}"
        for bdm in t["node_config"].get("BlockDeviceMappings", []):
            assert set(bdm) <= EC2_BLOCK_DEVICE_FIELDS
            assert set(bdm.get("Ebs", {})) <= EC2_EBS_FIELDS
        if name != cfg["head_node_type"]:
            assert t["resources"].get("evomerge_node") == 1, "one population actor per worker node"
    # the pinned runtime and the token reach every node (tests/test_clusters_pins.py checks the pins)
    assert cfg["file_mounts"]["~/evomerge-requirements.txt"] == "clusters/requirements.txt"
    assert any("pip install -r ~/evomerge-requirements.txt" in c for c in cfg["setup_commands"])
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd


@pytest.mark.parametrize("path", _launcher_files(), ids=lambda p: p.name)
def test_launcher_yaml_passes_ray_prepare_and_validate(path: Path) -> None:
    try:  # private API, guarded as ECOSYSTEM.md advises
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as err:  # pragma: no cover - depends on the Ray version
        pytest.skip(f"Ray's private config validation is not importable: {err}")
    cfg = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(cfg)
    assert cfg["available_node_types"]["worker_gpu"]["max_workers"] <= cfg["max_workers"]


def test_schema_check_would_catch_a_typo() -> None:
    cfg = yaml.safe_load(_launcher_files()[0].read_text())
    cfg["max_worker"] = 3  # typo of max_workers
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, _ray_schema())


# --- KubeRay ------------------------------------------------------------------------------

ANY = "any"  # a free-form map (labels, rayStartParams, resources) or a scalar


def _list(schema):
    return ("list", schema)


CONTAINER = {
    "name": ANY, "image": ANY, "imagePullPolicy": ANY, "command": ANY, "args": ANY, "workingDir": ANY,
    "ports": _list({"containerPort": ANY, "name": ANY, "protocol": ANY, "hostPort": ANY}),
    "resources": {"requests": ANY, "limits": ANY},
    "env": _list({"name": ANY, "value": ANY, "valueFrom": {
        "secretKeyRef": {"name": ANY, "key": ANY, "optional": ANY},
        "configMapKeyRef": {"name": ANY, "key": ANY, "optional": ANY},
        "fieldRef": {"fieldPath": ANY}}}),
    "envFrom": ANY,
    "volumeMounts": _list({"name": ANY, "mountPath": ANY, "readOnly": ANY, "subPath": ANY}),
    "lifecycle": ANY, "livenessProbe": ANY, "readinessProbe": ANY, "securityContext": ANY,
}
POD_TEMPLATE = {
    "metadata": {"labels": ANY, "annotations": ANY, "name": ANY},
    "spec": {
        "containers": _list(CONTAINER), "initContainers": _list(CONTAINER),
        "volumes": _list({"name": ANY, "persistentVolumeClaim": {"claimName": ANY, "readOnly": ANY},
                          "emptyDir": ANY, "configMap": ANY, "secret": ANY, "hostPath": ANY}),
        "nodeSelector": ANY, "tolerations": _list({"key": ANY, "operator": ANY, "value": ANY, "effect": ANY,
                                                     "tolerationSeconds": ANY}),
        "affinity": ANY, "serviceAccountName": ANY, "restartPolicy": ANY, "imagePullSecrets": ANY,
        "securityContext": ANY, "priorityClassName": ANY, "schedulerName": ANY,
    },
}
HEAD_GROUP = {"serviceType": ANY, "rayStartParams": ANY, "template": POD_TEMPLATE, "enableIngress": ANY,
              "headService": ANY, "suspend": ANY}
WORKER_GROUP = {"groupName": ANY, "replicas": ANY, "minReplicas": ANY, "maxReplicas": ANY, "idleTimeoutSeconds": ANY,
                "rayStartParams": ANY, "template": POD_TEMPLATE, "numOfHosts": ANY, "scaleStrategy": ANY,
                "suspend": ANY}
RAYCLUSTER_SPEC = {
    "rayVersion": ANY, "enableInTreeAutoscaling": ANY,
    "autoscalerOptions": {"upscalingMode": ANY, "idleTimeoutSeconds": ANY, "resources": ANY, "image": ANY,
                          "imagePullPolicy": ANY, "env": ANY, "envFrom": ANY, "securityContext": ANY,
                          "volumeMounts": ANY, "version": ANY},
    "headGroupSpec": HEAD_GROUP, "workerGroupSpecs": _list(WORKER_GROUP),
    "headServiceAnnotations": ANY, "suspend": ANY, "managedBy": ANY, "gcsFaultToleranceOptions": ANY,
    "authOptions": {"mode": ANY, "secretName": ANY, "enableK8sTokenAuth": ANY},
}
RAYJOB_SPEC = {
    "entrypoint": ANY, "runtimeEnvYAML": ANY, "jobId": ANY, "metadata": ANY,
    "shutdownAfterJobFinishes": ANY, "ttlSecondsAfterFinished": ANY, "activeDeadlineSeconds": ANY,
    "backoffLimit": ANY, "rayClusterSpec": RAYCLUSTER_SPEC, "clusterSelector": ANY,
    "submitterPodTemplate": POD_TEMPLATE, "submitterConfig": ANY, "submissionMode": ANY,
    "entrypointNumCpus": ANY, "entrypointNumGpus": ANY, "entrypointResources": ANY, "suspend": ANY,
    "managedBy": ANY, "deletionStrategy": ANY,
}
OBJECT_META = {"name": ANY, "namespace": ANY, "labels": ANY, "annotations": ANY}
KINDS = {
    "RayCluster": {"apiVersion": ANY, "kind": ANY, "metadata": OBJECT_META, "spec": RAYCLUSTER_SPEC},
    "RayJob": {"apiVersion": ANY, "kind": ANY, "metadata": OBJECT_META, "spec": RAYJOB_SPEC},
}


def unknown_fields(doc, schema, where="") -> list[str]:
    """Every key path in ``doc`` that ``schema`` does not allow."""
    if schema == ANY:
        return []
    if isinstance(schema, tuple) and schema[0] == "list":
        if not isinstance(doc, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(doc) for p in unknown_fields(item, schema[1], f"{where}[{i}]")]
    if not isinstance(doc, dict):
        return [f"{where}: expected a mapping"]
    out = []
    for key, value in doc.items():
        if key not in schema:
            out.append(f"{where}.{key}".lstrip("."))
        else:
            out.extend(unknown_fields(value, schema[key], f"{where}.{key}".lstrip(".")))
    return out


def _kuberay_docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((CLUSTERS / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def test_kuberay_manifests_use_only_crd_fields() -> None:
    docs = _kuberay_docs()
    assert {d["kind"] for _, d in docs} >= {"RayCluster", "RayJob"}
    for name, doc in docs:
        assert doc["apiVersion"] == "ray.io/v1", name
        assert doc["kind"] in KINDS, name
        bad = unknown_fields(doc, KINDS[doc["kind"]])
        assert not bad, f"{name}: fields the {doc['kind']} CRD does not define: {bad}"


def test_kuberay_field_check_would_catch_a_typo() -> None:
    doc = dict(next(d for _, d in _kuberay_docs() if d["kind"] == "RayJob"))
    doc["spec"] = dict(doc["spec"], shutdownAfterJobFinish=True)
    assert unknown_fields(doc, KINDS["RayJob"]) == ["spec.shutdownAfterJobFinish"]


def test_kuberay_clusters_use_token_authentication() -> None:
    for name, doc in _kuberay_docs():
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["authOptions"]["secretName"] == "evomerge-ray-token", name


def test_rayjob_runs_an_evomerge_job_with_a_pinned_runtime() -> None:
    job = next(d for _, d in _kuberay_docs() if d["kind"] == "RayJob")["spec"]
    script = job["entrypoint"].split()[1]
    assert job["entrypoint"].startswith("python jobs/") and (ROOT / script).is_file()
    env = yaml.safe_load(job["runtimeEnvYAML"])
    pins = env["pip"]["packages"]
    assert any(p.startswith("torch==") for p in pins) and any(p.startswith("optuna==") for p in pins)
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    groups = job["rayClusterSpec"]["workerGroupSpecs"]
    for g in groups:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"


def test_rayjob_working_dir_is_a_placeholder_explained_in_the_file() -> None:
    """No made-up project URL (none exists: no remote, none in pyproject): an unmistakable
    placeholder that never resolves, and the instruction to replace it in the manifest itself."""
    text = (CLUSTERS / "kuberay" / "rayjob.yaml").read_text()
    job = next(d for _, d in _kuberay_docs() if d["kind"] == "RayJob")["spec"]
    working_dir = yaml.safe_load(job["runtimeEnvYAML"])["working_dir"]
    assert working_dir.startswith("https://REPLACE-ME.invalid/")  # (.invalid: a reserved name, RFC 2606)
    assert "BEFORE APPLYING: replace the placeholder `working_dir`" in text
    for path in CLUSTERS.rglob("*"):
        if path.is_file():
            assert "github.com/evomerge/evomerge" not in path.read_text(), path


def test_no_secrets_in_cluster_files() -> None:
    import re

    pattern = re.compile(r"(password|secret_key|aws_secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}", re.I)
    url_with_password = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
    for path in CLUSTERS.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not pattern.search(text), path
            assert not url_with_password.search(text), path


def test_local_start_script_is_valid_bash() -> None:
    script = CLUSTERS / "local" / "start_head.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--dashboard-port" in out


def test_local_start_script_defaults_to_token_authentication_whatever_the_shell_exports() -> None:
    """`RAY_AUTH_MODE=disabled` exported in the shell (advised for local tests) must not open the
    head: only `--auth disabled` does (--dry-run prints the chosen settings and starts nothing)."""
    script = CLUSTERS / "local" / "start_head.sh"

    def dry(*args: str, mode: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
        if mode is not None:
            env["RAY_AUTH_MODE"] = mode
        return subprocess.run(["bash", str(script), "--dry-run", *args], capture_output=True, text=True, env=env,
                              check=True)

    for mode in (None, "token", "disabled"):
        res = dry(mode=mode)
        assert res.stdout.startswith("auth=token "), (mode, res.stdout)  # was: auth=disabled for "disabled"
    assert "does not choose the head's mode" in dry(mode="disabled").stderr
    assert dry("--auth", "disabled", mode=None).stdout.startswith("auth=disabled ")
    assert dry("--auth", "disabled", mode="disabled").stderr == ""

