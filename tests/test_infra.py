"""Static checks of the deployment files: infra/ (Dockerfile, KubeRay, K8s CronJob, cluster launcher) and jobs/configs/.

Fast (no cluster, no network): YAML parses, the fields KubeRay / Kubernetes / Ray need are present and consistent,
the cluster-launcher YAML validates against the ``ray-schema.json`` that Ray ships, each stage config loads into its
config dataclass, each RayJob entrypoint resolves with its job's own argument parser, and nothing secret is inlined.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib
import io
import json
import re
import shlex
import zoneinfo
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
CONFIGS = ROOT / "jobs" / "configs"

# stage -> job module (python -m jobs.<module>)
STAGES = {
    "generate_synthetic": "generate_synthetic",
    "train_tutor": "train_tutor",
    "tutor_inference": "tutor_inference",
    "distill": "distill",
    "catalog": "catalog_tryon",
    "evaluate": "evaluate",
    "nightly": "nightly",
}
GPU_STAGES = {"train_tutor", "tutor_inference", "distill", "catalog", "nightly"}

SECRET_ENV_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY)", re.I)
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def yaml_files() -> list[Path]:
    files = sorted(p for d in (INFRA, CONFIGS) for p in d.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert files, "no YAML files found under infra/ and jobs/configs/"
    return files


def load_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def load_one(path: Path) -> dict:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path.name}: expected one YAML document, got {len(docs)}"
    assert isinstance(docs[0], dict)
    return docs[0]


def ray_pin() -> str:
    m = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert m, "constraints.txt pins no ray version"
    return m.group(1)


def walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]")


def containers(obj: Any) -> Iterator[tuple[str, dict]]:
    for path, node in walk(obj):
        if isinstance(node, dict) and isinstance(node.get("containers"), list):
            for i, c in enumerate(node["containers"]):
                yield f"{path}.containers[{i}]", c


def manifests() -> dict[str, dict]:
    out = {}
    for p in sorted(INFRA.rglob("*.yaml")):
        if p.parent.name == "cluster-launcher":
            continue
        for i, doc in enumerate(load_docs(p)):
            out[f"{p.relative_to(ROOT)}#{i}"] = doc
    return out


def gpu_limit(container: dict) -> int:
    limits = (container.get("resources") or {}).get("limits") or {}
    return int(str(limits.get("nvidia.com/gpu", 0)))


def check_cluster_spec(spec: dict, where: str, *, needs_gpu: bool) -> None:
    assert str(spec.get("rayVersion")) == ray_pin(), f"{where}: rayVersion {spec.get('rayVersion')} != ray=={ray_pin()}"
    assert (spec.get("authOptions") or {}).get("mode") == "token", f"{where}: authOptions.mode must be token"
    head = spec["headGroupSpec"]
    params = head.get("rayStartParams") or {}
    assert params.get("num-cpus") == "0", f"{where}: head rayStartParams num-cpus must be the string \"0\""
    head_containers = head["template"]["spec"]["containers"]
    assert head_containers and all(gpu_limit(c) == 0 for c in head_containers), f"{where}: the head must be CPU-only"
    groups = spec.get("workerGroupSpecs") or []
    assert groups, f"{where}: no worker groups"
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names), f"{where}: duplicate group names {names}"
    has_gpu = has_cpu = False
    for g in groups:
        gw = f"{where} group {g['groupName']}"
        assert DNS1035.match(g["groupName"]), f"{gw}: group name must be a DNS-1035 label"
        rsp = g.get("rayStartParams") or {}
        # KubeRay rejects resources in both rayStartParams and the group's resources field
        assert not ({"num-cpus", "num-gpus", "memory", "resources"} & set(rsp) and g.get("resources")), gw
        assert g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 0), f"{gw}: replicas bounds"
        cs = g["template"]["spec"]["containers"]
        gpus = [gpu_limit(c) for c in cs]
        if any(gpus):
            has_gpu = True
            for c in cs:
                res = c.get("resources") or {}
                assert str((res.get("requests") or {}).get("nvidia.com/gpu", res["limits"]["nvidia.com/gpu"])) == \
                    str(res["limits"]["nvidia.com/gpu"]), f"{gw}: GPU requests must equal limits"
            tol = g["template"]["spec"].get("tolerations") or []
            assert any(t.get("key") == "nvidia.com/gpu" for t in tol), f"{gw}: GPU pods need the nvidia.com/gpu toleration"
        else:
            has_cpu = True
    if needs_gpu:
        assert has_gpu, f"{where}: needs a GPU worker group with nvidia.com/gpu limits"
    assert has_cpu or not needs_gpu or where.endswith(("train_tutor", "distill")), f"{where}: needs a CPU worker group"


def runtime_env_of(spec: dict, where: str) -> dict:
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(env, dict), f"{where}: runtimeEnvYAML must be a mapping"
    return env


def check_excludes(excludes: list[str], where: str) -> None:
    """With Ray's own matcher: .git and the top-level data/ are excluded, no file of the packages is."""
    from ray._private.runtime_env.packaging import _get_excludes

    assert ".git" in excludes, f"{where}: excludes must contain .git"
    match = _get_excludes(ROOT, excludes)
    assert match(ROOT / ".git" / "HEAD"), f"{where}: .git is not excluded"
    assert match(ROOT / "data" / "x.png"), f"{where}: the top-level data/ folder is not excluded"
    for pkg in ("pfafn", "pipelines", "jobs"):
        for f in (ROOT / pkg).rglob("*.py"):
            assert not match(f), f"{where}: excludes drop package file {f.relative_to(ROOT)} (anchor patterns with /)"


# ----------------------------------------------------------------------------------------------------------------------
# strict schema checks: what `kubectl apply` (default strict field validation) accepts
#
# The ray.io/v1 objects are checked against the structural openAPIV3Schema of the KubeRay 1.7.0 CRDs, copied into
# tests/data/kuberay-crds/ (see its NOTICE). The API server prunes, and strict field validation rejects, every field
# that a `properties` map does not list unless `x-kubernetes-preserve-unknown-fields` is set; jsonschema gets the same
# rule as `additionalProperties: false`. The Kubernetes objects (CronJob, ConfigMap, ServiceAccount) are checked
# against the `kubernetes` Python client's models (generated from the Kubernetes OpenAPI spec): every key must be one
# of its model's `attribute_map` names, recursively through `openapi_types`, and deserializing with client-side
# validation checks required fields and enums.

CRDS = Path(__file__).resolve().parent / "data" / "kuberay-crds"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 4 MB of YAML

# meta/v1 ObjectMeta (the root `metadata` of every object; CRDs declare it as a bare object)
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"}, "generateName": {"type": "string"}, "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        **{k: {} for k in ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
                           "deletionGracePeriodSeconds", "managedFields", "selfLink")},
    },
}


def strict_schema(node: Any) -> Any:
    """A CRD structural schema as a JSON schema that rejects unknown fields the way the API server does."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict_schema(sub) for sub in value]
        elif not key.startswith("x-kubernetes-"):
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):  # an int or a string (quantities, ports, maxUnavailable)
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (node.get("type") == "object" and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False  # a field the properties map does not list is unknown
    return out


@functools.lru_cache(maxsize=None)
def crd_schemas() -> dict[str, dict]:
    """kind -> strict JSON schema of its ray.io/v1 version (root metadata = ObjectMeta)."""
    out = {}
    for path in sorted(CRDS.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=_YAML_LOADER)
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = strict_schema(v1["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = OBJECT_META
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
        out[crd["spec"]["names"]["kind"]] = schema
    assert set(out) == {"RayCluster", "RayJob", "RayCronJob", "RayService"}, sorted(out)
    return out


K8S_MODELS = {("batch/v1", "CronJob"): "V1CronJob", ("v1", "ConfigMap"): "V1ConfigMap",
              ("v1", "ServiceAccount"): "V1ServiceAccount"}
_SCALARS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
# the client types quantities (resources.limits/requests) as strings; the API server also takes numbers there
_QUANTITY_MAPS = ("limits", "requests")
# enums the generated models document but do not check (values from their docstrings)
K8S_ENUMS = {("V1CronJobSpec", "concurrency_policy"): ("Allow", "Forbid", "Replace")}


def model_errors(value: Any, type_name: str, path: str = "") -> list[str]:
    """Fields of ``value`` that the kubernetes client's model ``type_name`` does not have, or of the wrong kind."""
    import kubernetes.client as k8s

    where = path or "<root>"
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, v in enumerate(value) for e in model_errors(v, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith(("dict(", "dict[")):  # dict(str, V) in older clients, dict[str, V] in newer ones
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        inner = type_name[type_name.index(",") + 1:-1].strip()
        if path.rsplit(".", 1)[-1] in _QUANTITY_MAPS and inner == "str":
            return [f"{path}.{key}: expected a quantity" for key, v in value.items()
                    if isinstance(v, bool) or not isinstance(v, (str, int, float))]
        return [e for key, v in value.items() for e in model_errors(v, inner, f"{path}.{key}")]
    if type_name in ("object", "datetime", "date"):
        return []
    if type_name in _SCALARS:
        ok = isinstance(value, _SCALARS[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        return [] if ok else [f"{where}: expected {type_name}, got {value!r}"]
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping"]
    python_name = {json_name: name for name, json_name in model.attribute_map.items()}
    errors = [f"{path}.{key}: unknown field of {type_name}" for key in value if key not in python_name]
    for key, v in value.items():
        if key in python_name:
            errors += model_errors(v, model.openapi_types[python_name[key]], f"{path}.{key}" if path else key)
            allowed = K8S_ENUMS.get((type_name, python_name[key]))
            if allowed and v not in allowed:
                errors.append(f"{path}.{key}: {v!r} is not one of {list(allowed)}")
    return errors


def k8s_model_errors(doc: dict, model: str) -> list[str]:
    """Strict fields, then the client's own deserialization (required fields, enums)."""
    import json

    import kubernetes.client as k8s

    errors = model_errors(doc, model)
    if errors:
        return errors

    class _Response:  # what ApiClient.deserialize reads
        data = json.dumps(doc)

    try:
        k8s.ApiClient().deserialize(_Response(), model)
    except (ValueError, TypeError) as exc:
        return [f"<root>: {exc}"]
    return []


def schema_errors(doc: dict) -> list[str]:
    """Every schema violation of one manifest, as `path: message` lines (empty when it would apply)."""
    import jsonschema

    kind = doc.get("kind")
    if (doc.get("apiVersion"), kind) in K8S_MODELS:
        return k8s_model_errors(doc, K8S_MODELS[(doc.get("apiVersion"), kind)])
    if doc.get("apiVersion") == "ray.io/v1":
        schema = crd_schemas().get(kind)
    else:
        return [f"no schema for apiVersion {doc.get('apiVersion')} kind {kind}"]
    if schema is None:
        return [f"ray.io/v1 has no kind {kind}"]
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc))


@pytest.mark.parametrize("where", list(manifests()))
def test_manifest_matches_its_schema(where):
    errors = schema_errors(manifests()[where])
    assert not errors, f"{where} would be rejected by kubectl apply:\n" + "\n".join(errors[:20])


def test_every_infra_object_is_schema_checked():
    kinds = {(d["apiVersion"], d["kind"]) for d in manifests().values()}
    assert ("ray.io/v1", "RayCronJob") in kinds and ("ray.io/v1", "RayJob") in kinds and ("batch/v1", "CronJob") in kinds
    for api, kind in kinds:
        assert api == "ray.io/v1" or (api, kind) in K8S_MODELS, f"{api} {kind} has no schema check"


def test_kuberay_crd_copy_is_v1_7_0_with_notice():
    notice = (CRDS / "NOTICE").read_text()
    assert "v1.7.0" in notice and "helm-chart/kuberay-operator/crds" in notice and "Apache" in notice
    for path in CRDS.glob("ray.io_*.yaml"):
        assert "controller-gen" in path.read_text()[:2000], path.name


@pytest.mark.parametrize("mutate, expected", [
    # the field this file used to set: no KubeRay release has RayCronJob.spec.concurrencyPolicy
    (lambda d: d["spec"].update(concurrencyPolicy="Forbid"), "concurrencyPolicy"),
    (lambda d: d["spec"]["jobTemplate"].update(entrypont="typo"), "entrypont"),
    (lambda d: d["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
     .update(imagePullPolice="Always"), "imagePullPolice"),
    (lambda d: d["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="4"), "replicas"),
    (lambda d: d["metadata"].update(lables={}), "lables"),
    (lambda d: d["spec"].pop("schedule"), "schedule"),
])
def test_crd_check_rejects(mutate, expected):
    doc = copy.deepcopy(load_one(KUBERAY / "raycronjob-nightly.yaml"))
    mutate(doc)
    errors = schema_errors(doc)
    assert errors and any(expected in e for e in errors), errors


def test_crd_check_int_or_string_and_preserved_maps():
    doc = copy.deepcopy(load_one(KUBERAY / "raycluster.yaml"))
    group = doc["spec"]["workerGroupSpecs"][0]
    group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 3  # int-or-string: both forms
    group["rayStartParams"] = {"any-flag": "1"}  # a string map
    assert not schema_errors(doc)
    group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = [3]
    assert schema_errors(doc)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"].update(concurrencyPolicey="Forbid"), "concurrencyPolicey"),
    (lambda d: d["spec"].update(concurrencyPolicy="Never"), "Never"),
    (lambda d: d["spec"]["jobTemplate"]["spec"].update(backofLimit=0), "backofLimit"),
    (lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].update(cmd=["x"]), "cmd"),
])
def test_k8s_check_rejects(mutate, expected):
    doc = copy.deepcopy(load_one(INFRA / "k8s" / "cronjob-nightly.yaml"))
    mutate(doc)
    errors = schema_errors(doc)
    assert errors and any(expected in e for e in errors), errors
    cm = copy.deepcopy(load_one(INFRA / "k8s" / "configmap-env.yaml"))
    cm["data"]["N"] = 1
    assert schema_errors(cm)


# ----------------------------------------------------------------------------------------------------------------------
# every YAML parses


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    docs = load_docs(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{path}: empty or not a mapping"


def test_all_stages_have_config_and_rayjob():
    for stage in STAGES:
        assert (CONFIGS / f"{stage}.yaml").is_file(), f"jobs/configs/{stage}.yaml missing"
        assert (KUBERAY / f"rayjob-{stage}.yaml").is_file(), f"infra/kuberay/rayjob-{stage}.yaml missing"


def test_one_image_everywhere_and_in_docs():
    images = {c["image"] for doc in manifests().values() for _, c in containers(doc)}
    launcher = load_one(INFRA / "cluster-launcher" / "aws-gpu.yaml")
    images.add(launcher["docker"]["image"])
    assert len(images) == 1, f"manifests use different images: {sorted(images)}"
    image = images.pop()
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"pin an image tag, not {image}"
    assert image in (ROOT / "docs" / "deployment.md").read_text(), "docs/deployment.md must show how to build this image"


# ----------------------------------------------------------------------------------------------------------------------
# KubeRay


def test_raycluster():
    doc = load_one(KUBERAY / "raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert DNS1035.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 50
    check_cluster_spec(doc["spec"], "raycluster", needs_gpu=True)
    cpu_groups = [g for g in doc["spec"]["workerGroupSpecs"]
                  if not any(gpu_limit(c) for c in g["template"]["spec"]["containers"])]
    assert cpu_groups, "raycluster: needs a CPU decode worker group"


@pytest.mark.parametrize("stage", list(STAGES))
def test_rayjob(stage, tmp_path):
    doc = load_one(KUBERAY / f"rayjob-{stage}.yaml")
    where = f"rayjob-{stage}"
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    name = doc["metadata"]["name"]
    assert DNS1035.match(name) and len(name) <= 47, f"{where}: RayJob name must be a DNS-1035 label of <= 47 chars"
    spec = doc["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", f"jobs.{STAGES[stage]}"], f"{where}: entrypoint must be python -m jobs.{STAGES[stage]}"
    assert argv[argv.index("--config") + 1] == f"jobs/configs/{stage}.yaml", f"{where}: --config jobs/configs/{stage}.yaml"
    env = runtime_env_of(spec, where)
    check_excludes(env.get("excludes") or [], where)
    for key in (env.get("env_vars") or {}):
        assert not SECRET_ENV_NAME.search(key), f"{where}: secret-looking env var {key} in runtimeEnvYAML"
    assert isinstance(spec.get("shutdownAfterJobFinishes"), bool), f"{where}: set shutdownAfterJobFinishes"
    ttl = spec.get("ttlSecondsAfterFinished")
    assert isinstance(ttl, int) and ttl >= 0, f"{where}: ttlSecondsAfterFinished must be an int >= 0"
    assert spec["shutdownAfterJobFinishes"] or ttl == 0, f"{where}: KubeRay rejects a TTL without shutdownAfterJobFinishes"
    assert isinstance(spec.get("activeDeadlineSeconds"), int) and spec["activeDeadlineSeconds"] > 0, where
    assert isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] >= 0, where
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode"), where
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), f"{where}: exactly one of rayClusterSpec/clusterSelector"
    if "clusterSelector" in spec:
        assert spec["clusterSelector"].get("ray.io/cluster"), f"{where}: clusterSelector needs ray.io/cluster"
        assert not spec["shutdownAfterJobFinishes"], f"{where}: a selected cluster is not the job's to shut down"
    else:
        check_cluster_spec(spec["rayClusterSpec"], where, needs_gpu=stage in GPU_STAGES)


def _job_main(module: str):
    try:
        mod = importlib.import_module(f"jobs.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"jobs.{module}":
            pytest.skip(f"jobs/{module}.py is not in the tree yet (being written by another engineer)")
        raise
    assert callable(getattr(mod, "main", None)), f"jobs.{module} has no main(argv)"
    return mod.main


@pytest.mark.parametrize("stage", list(STAGES))
def test_rayjob_entrypoint_resolves_with_its_job_parser(stage, monkeypatch):
    """The entrypoint's flags and --config file resolve through the job's own CLI (``--print-config`` runs nothing)."""
    spec = load_one(KUBERAY / f"rayjob-{stage}.yaml")["spec"]
    argv = shlex.split(spec["entrypoint"])[3:]
    main = _job_main(STAGES[stage])
    monkeypatch.chdir(ROOT)  # the job's working_dir on the cluster is the repository root
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv + ["--print-config"])
        except SystemExit as exc:  # argparse errors
            code = exc.code
    assert code == 0, f"{stage}: `{spec['entrypoint']} --print-config` exited {code}: {err.getvalue()[-500:]}"
    printed = yaml.safe_load(out.getvalue())
    for flag, value in zip(argv, argv[1:]):
        if flag.startswith("--") and flag not in ("--config", "--set") and not value.startswith("--"):
            key = flag[2:].replace("-", "_")
            if isinstance(printed, dict) and key in printed:
                assert printed[key] == value, f"{stage}: {flag} {value} resolved to {printed[key]!r}"


def _entrypoint_config(stage: str, monkeypatch) -> dict:
    spec = load_one(KUBERAY / f"rayjob-{stage}.yaml")["spec"]
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _job_main(STAGES[stage])(shlex.split(spec["entrypoint"])[3:] + ["--print-config"]) == 0
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("stage", ["train_tutor", "distill"])
def test_training_rayjobs_read_vgg_weights_from_storage(stage, monkeypatch):
    """The image holds no VGG19 weights: `torchvision` (hub cache) would stop the job before its first step."""
    vgg = _entrypoint_config(stage, monkeypatch)["loss"]["vgg"]
    assert isinstance(vgg, str) and vgg.startswith("s3://") and vgg.endswith(".pth"), f"{stage}: loss.vgg={vgg!r}"


def test_evaluate_rayjob_scores_against_ground_truth(monkeypatch):
    config = _entrypoint_config("evaluate", monkeypatch)
    for key in ("ground_truth", "lpips_weights", "fid_weights"):
        assert str(config[key]).startswith("s3://"), f"evaluate RayJob: {key} not set ({config[key]!r})"


def test_vgg_weights_uri_is_checked_on_the_driver(s3_bucket):
    """check_vgg_available (run by run_training before Ray starts) reads the s3:// URI and refuses what is not there
    or not a VGG19 state dict, with one line naming the URI."""
    import fsspec
    import torch

    from pipelines.core.errors import StageError
    from pipelines.training.common import check_vgg_available
    from pipelines.training.config import LossConfig

    missing = f"{s3_bucket}/weights/vgg19-dcbb9e9d.pth"
    with pytest.raises(StageError, match="no file at") as info:
        check_vgg_available(LossConfig(vgg=missing))
    assert missing in str(info.value)
    wrong = f"{s3_bucket}/weights/not-vgg.pth"
    with fsspec.open(wrong, "wb") as f:
        torch.save({"conv.weight": torch.zeros(1)}, f)
    with pytest.raises(StageError, match="VGG19"):
        check_vgg_available(LossConfig(vgg=wrong))


def test_raycronjob_nightly():
    doc = load_one(KUBERAY / "raycronjob-nightly.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCronJob"
    spec = doc["spec"]
    assert_cron(spec["schedule"])
    assert "TZ" not in spec["schedule"], "use timeZone, not CRON_TZ in the schedule"
    zoneinfo.ZoneInfo(spec["timeZone"])  # a valid IANA zone
    assert "concurrencyPolicy" not in spec, "RayCronJob has no concurrencyPolicy: overlap is stopped by the run lock"
    nightly = load_one(KUBERAY / "rayjob-nightly.yaml")["spec"]
    assert spec["jobTemplate"] == nightly, "raycronjob-nightly jobTemplate must equal the spec of rayjob-nightly.yaml"
    nightly_cfg = yaml.safe_load((CONFIGS / "nightly.yaml").read_text())
    assert spec["timeZone"] == nightly_cfg["timezone"], "the schedule's zone and the nightly's 'today' must agree"
    assert nightly_cfg["timeout_s"] < nightly["activeDeadlineSeconds"], "nightly gives up waiting before KubeRay kills it"


def test_k8s_cronjob_nightly():
    doc = load_one(INFRA / "k8s" / "cronjob-nightly.yaml")
    assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "CronJob"
    spec = doc["spec"]
    assert_cron(spec["schedule"])
    zoneinfo.ZoneInfo(spec["timeZone"])
    assert spec["concurrencyPolicy"] == "Forbid"
    nightly_cfg = yaml.safe_load((CONFIGS / "nightly.yaml").read_text())
    assert spec["timeZone"] == nightly_cfg["timezone"]
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > nightly_cfg["timeout_s"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    cmd = c.get("command", []) + c.get("args", [])
    assert cmd[:3] == ["python", "-m", "jobs.nightly"], cmd
    address = cmd[cmd.index("--address") + 1]
    raycluster = load_one(KUBERAY / "raycluster.yaml")["metadata"]["name"]
    assert address == f"http://{raycluster}-head-svc:8265", f"dashboard address should be the KubeRay head service, not {address}"
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
    secret = load_one(KUBERAY / "raycluster.yaml")["spec"]["authOptions"]["secretName"]
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == secret, "CronJob must use the cluster's token Secret"


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def assert_cron(schedule: str) -> None:
    fields = schedule.split()
    assert len(fields) == 5, f"cron schedule needs 5 fields: {schedule!r}"
    limits = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    for f, (lo, hi) in zip(fields, limits):
        assert _CRON_FIELD.match(f), f"bad cron field {f!r} in {schedule!r}"
        for n in re.findall(r"\d+", f.split("/")[0]):
            assert lo <= int(n) <= hi, f"cron value {n} out of {lo}-{hi} in {schedule!r}"


@pytest.mark.parametrize("bad", ["* * * *", "61 1 * * *", "30 25 * * *", "CRON_TZ=UTC 30 1 * * *"])
def test_cron_checker_rejects(bad):
    with pytest.raises(AssertionError):
        assert_cron(bad)


# ----------------------------------------------------------------------------------------------------------------------
# secrets: referenced, never inlined

_LEAK_PATTERNS = [
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"(?i)aws_?secret_?access_?key\s*[:=]\s*['\"]?(?!\s*$)[A-Za-z0-9/+=]{16,}"), "an AWS secret key"),
    (re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"), "a 40-char secret-key-like literal"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"(?i)\b(password|passwd|secret|auth_token|api_key|token)\b\s*[:=]\s*['\"]?(?![/$<{])[^\s'\"#]{6,}"),
     "a password/token literal"),
    (re.compile(r"(?i)stringData\s*:"), "an inline Secret"),
]


def find_leaks(text: str) -> list[str]:
    hits = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for pattern, what in _LEAK_PATTERNS:
            if pattern.search(line):
                hits.append(f"line {lineno}: {what}: {line.strip()[:80]}")
    return hits


def infra_text_files() -> list[Path]:
    files = [p for d in (INFRA, CONFIGS) for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "Dockerfile" for p in files)
    return sorted(files)


@pytest.mark.parametrize("path", infra_text_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_inline_secrets(path):
    hits = find_leaks(path.read_text(errors="replace"))
    assert not hits, f"{path.relative_to(ROOT)} looks like it inlines a credential:\n" + "\n".join(hits)


@pytest.mark.parametrize("sample", [
    "AKIA" + "Q" * 16,
    "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY",
    "-----BEGIN RSA " + "PRIVATE KEY-----",
    "  password: " + "hunter2hunter2",
    "  auth_token: " + "3f9a0c5e7d1b",
    "stringData" + ":",
])
def test_leak_scanner_catches(sample):
    assert find_leaks(sample), f"scanner missed {sample!r}"


def test_secret_env_vars_come_from_secrets():
    """Every container env var with a secret-looking name is a secretKeyRef; no Secret objects live in infra/."""
    for where, doc in manifests().items():
        assert doc.get("kind") != "Secret", f"{where}: Secret manifests must not be committed (create them out of band)"
        for cpath, c in containers(doc):
            for e in c.get("env", []) or []:
                if SECRET_ENV_NAME.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in (e.get("valueFrom") or {}), \
                        f"{where}{cpath}: {e['name']} must come from a Secret (valueFrom.secretKeyRef)"
            for ref in c.get("envFrom", []) or []:
                assert set(ref) <= {"configMapRef", "secretRef", "prefix"}, f"{where}{cpath}: envFrom {ref}"


# ----------------------------------------------------------------------------------------------------------------------
# Ray cluster launcher


def _launcher() -> dict:
    return load_one(INFRA / "cluster-launcher" / "aws-gpu.yaml")


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_launcher_validates_against_ray_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _launcher()
    jsonschema.validate(config, _ray_schema())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs before touching AWS


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(not_a_ray_key=1),
    lambda c: c["available_node_types"]["head.cpu"].update(resources={"CPU": -1}),
    lambda c: c["available_node_types"]["head.cpu"].pop("node_config"),
    lambda c: c["docker"].update(imagee="typo"),
])
def test_ray_schema_rejects_broken_launcher(mutate):
    import jsonschema

    config = _launcher()
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _ray_schema())


def test_cluster_launcher_shape():
    c = _launcher()
    assert c["provider"]["type"] == "aws"
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head must advertise no CPUs"
    gpu_families = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5")
    gpu = {n: t for n, t in types.items() if t["node_config"]["InstanceType"].split(".")[0] in gpu_families}
    spot = [n for n, t in gpu.items() if (t["node_config"].get("InstanceMarketOptions") or {}).get("MarketType") == "spot"]
    on_demand = [n for n, t in gpu.items() if "InstanceMarketOptions" not in t["node_config"]]
    assert spot, "needs a spot GPU node type for inference"
    assert on_demand, "needs an on-demand GPU node type for training"
    cpu = [n for n, t in types.items() if n != c["head_node_type"] and n not in gpu]
    assert cpu, "needs a CPU decode node type"
    assert c["docker"]["image"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [cmd for cmd in c[key] if "ray start" in cmd]
        assert starts and all("RAY_AUTH_MODE=token" in cmd for cmd in starts), f"{key}: start Ray with token auth"
    assert any("RAY_AUTH_MODE=token" in o for o in c["docker"]["run_options"])
    amis = {t["node_config"].get("ImageId") for t in types.values()}
    assert len(amis) == 1 and re.match(r"^ami-[0-9a-f]{8,17}$", str(next(iter(amis)))), \
        f"every node type must name the one AMI (Ray's default image has a driver too old for CUDA 13): {amis}"
    text = (INFRA / "cluster-launcher" / "aws-gpu.yaml").read_text()
    assert "/aws/service/deeplearning/ami/" in text and "580" in text, "say how to pick the AMI and the driver floor"


# ----------------------------------------------------------------------------------------------------------------------
# stage configs


def _config_class(stage: str):
    module = STAGES[stage]
    try:
        mod = importlib.import_module(f"jobs.{module}")
    except ModuleNotFoundError as exc:
        if exc.name in (f"jobs.{module}",) or (exc.name or "").startswith("pipelines."):
            pytest.skip(f"{exc.name} is not in the tree yet (being written by another engineer)")
        raise
    candidates = {v for k, v in vars(mod).items()
                  if isinstance(v, type) and dataclasses.is_dataclass(v) and k.endswith("Config")}
    assert len(candidates) == 1, f"jobs.{module}: expected one *Config dataclass, found {candidates}"
    return candidates.pop()


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_config_loads_into_its_dataclass(stage):
    from pipelines.core.config import build_config

    cls = _config_class(stage)
    data = yaml.safe_load((CONFIGS / f"{stage}.yaml").read_text())
    data.pop("preset", None)  # handled by pipelines.core.config.resolve_config before build_config
    config = build_config(cls, file_data=data)
    missing = _undocumented_fields(cls, data)
    assert not missing, f"jobs/configs/{stage}.yaml does not document fields {missing} of {cls.__name__}"
    if stage == "nightly":
        config.validate()


def _undocumented_fields(cls, data: dict, prefix: str = "") -> list[str]:
    """Dataclass fields (nested dataclasses included) that the YAML mapping does not spell out."""
    import typing

    hints = typing.get_type_hints(cls)
    missing = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in data:
            missing.append(prefix + f.name)
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(data[f.name], dict):
            missing += _undocumented_fields(hints[f.name], data[f.name], f"{prefix}{f.name}.")
    return missing


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_config_key_is_commented(stage):
    lines = (CONFIGS / f"{stage}.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*):", line)  # a mapping key at any depth (list items excluded)
        if not m:
            continue
        value = line.split(":", 1)[1]
        assert re.search(r"\s#\s*\S", value), f"{stage}.yaml: key {m.group(1)} has no comment on its line"


def test_nightly_config_excludes_keep_the_packages():
    data = yaml.safe_load((CONFIGS / "nightly.yaml").read_text())
    check_excludes(data["excludes"], "nightly.yaml")


# ----------------------------------------------------------------------------------------------------------------------
# Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (INFRA / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile():
    ins = _dockerfile_instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    args = dict(re.match(r"(\w+)=?(.*)", rest).groups() for word, rest in ins if word == "ARG")
    base = froms[0]
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), base)
    assert re.match(r"(python:3\.11|nvidia/cuda:)", base), f"base image should be python:3.11 or nvidia/cuda, got {base}"
    users = [rest for word, rest in ins if word == "USER"]
    assert users, "the image must switch to a non-root USER"
    final_user = users[-1].split(":")[0]
    assert final_user not in ("root", "0"), f"final USER is {final_user}"
    runs = [rest for word, rest in ins if word == "RUN"]
    pip_installs = [m for r in runs for m in re.findall(r"pip install[^&;]*", r)]
    assert pip_installs and all("--no-deps" in p for p in pip_installs), \
        f"every pip install must take --no-deps (only infra/requirements.lock decides versions): {pip_installs}"
    assert re.search(r"-r\s+infra/requirements\.lock", pip_installs[0]), "the first pip install must be the lock"
    assert any(re.search(r"pip check", r) for r in runs), "pip check proves the locked set is consistent"
    copies = " ".join(rest for word, rest in ins if word == "COPY")
    assert "infra/requirements.lock" in copies
    apt = " ".join(r for r in runs if "apt-get install" in r).split()
    for package in ("rsync", "openssh-client"):  # the Ray cluster launcher's file sync and worker set-up
        assert package in apt, f"the image must install {package}"
    envs = " ".join(rest for word, rest in ins if word in ("ENV", "ARG"))
    assert "RAY_AUTH_MODE=token" in envs.replace(" ", ""), "document/default RAY_AUTH_MODE=token in the image"
    for word, rest in ins:
        if word in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest):
                assert not SECRET_ENV_NAME.search(name), f"{word} {name}: credentials must not be baked into the image"


def test_dockerignore():
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    for entry in (".git", ".venv", "runs", "data"):
        assert entry in ignore, f"Dockerfile.dockerignore must exclude {entry}"


def _lock() -> dict[str, str]:
    pins = {}
    for line in (INFRA / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and " " not in line, f"requirements.lock: not an exact pin: {line!r}"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_lock_pins_every_dependency_and_agrees_with_constraints():
    """The lock is closed (every requirement of every locked package is locked, markers evaluated for the image's
    platform) and agrees with constraints.txt and with this venv (installed from constraints.txt)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    lock = _lock()
    assert {"torch", "ray", "nvidia-cublas", "setuptools"} <= set(lock), "the lock must be the full transitive set"
    env = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}

    def closed(req: str, extras: set[str]) -> None:
        r = Requirement(req)
        if r.marker and not any(r.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
            return
        name = r.name.lower().replace("_", "-")
        assert name in lock, f"{req} is not in infra/requirements.lock (regenerate: sh infra/make-lock.sh)"
        assert r.specifier.contains(lock[name], prereleases=True), f"lock {name}=={lock[name]} violates {req}"

    project = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"]:
        closed(req, set())
        for extra in Requirement(req).extras:
            for sub in metadata.requires(Requirement(req).name) or []:
                closed(sub, {extra})
    for name in lock:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for sub in requires:
            closed(sub, set())
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if m and m.group(1).lower() in lock:
            assert lock[m.group(1).lower()] == m.group(2), f"lock and constraints.txt disagree on {m.group(1)}"
    for name, version in lock.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        assert installed.split("+")[0] == version.split("+")[0], f"{name}: venv {installed}, lock {version}"
