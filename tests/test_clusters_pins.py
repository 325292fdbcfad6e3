"""One pinned dependency list for clusters (clusters/requirements.txt): it pins every dependency
of pyproject.toml to a version its specifier allows, and every cluster config installs exactly it."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
REQUIREMENTS = CLUSTERS / "requirements.txt"


def pins(lines) -> dict[str, Requirement]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name not in out, f"{name} pinned twice"
            out[name] = req
    return out


def pinned_version(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req}: not an exact pin"
    return spec.version


def project_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["postgres"])
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in reqs}


def test_every_project_dependency_is_pinned_within_its_range() -> None:
    pinned = pins(REQUIREMENTS.read_text().splitlines())
    project = project_requirements()
    assert "cmaes" in project and "cmaes" in pinned
    assert set(pinned) == set(project), (
        f"missing pins: {sorted(set(project) - set(pinned))}; pins of no dependency: {sorted(set(pinned) - set(project))}")
    for name, req in project.items():
        version = pinned_version(pinned[name])
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} is outside pyproject's {req}"
        assert pinned[name].extras == req.extras, f"{name}: extras {pinned[name].extras} vs pyproject {req.extras}"


def test_the_pin_check_would_catch_a_version_outside_the_range() -> None:
    req = Requirement("torch>=2.2")
    assert not req.specifier.contains("2.1.0")
    with pytest.raises(AssertionError, match="pinned twice"):
        pins(["cmaes==0.13.1", "CMAES==0.13.1"])


def test_launcher_installs_the_requirements_file() -> None:
    cfg = yaml.safe_load((CLUSTERS / "launcher" / "evomerge-aws.yaml").read_text())
    mounts = cfg["file_mounts"]
    remote = next(r for r, local in mounts.items() if (ROOT / local).resolve() == REQUIREMENTS.resolve())
    installs = [c for c in cfg["setup_commands"] if "pip install" in c]
    assert installs == ["python3 -m pip install --upgrade pip", f"python3 -m pip install -r {remote}"]


def test_rayjob_pip_list_is_the_requirements_file() -> None:
    job = next(d for d in yaml.safe_load_all((CLUSTERS / "kuberay" / "rayjob.yaml").read_text()) if d)
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    listed = pins(env["pip"]["packages"])
    pinned = pins(REQUIREMENTS.read_text().splitlines())
    ray = pinned.pop("ray")  # the image provides Ray: its tag must be the pinned version
    assert {k: str(v) for k, v in listed.items()} == {k: str(v) for k, v in pinned.items()}
    spec = job["spec"]["rayClusterSpec"]
    images = [c["image"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]] for c in g["template"]["spec"]["containers"]]
    assert all(i.startswith(f"rayproject/ray:{pinned_version(ray)}-") for i in images), images
    assert spec["rayVersion"] == pinned_version(ray)


def test_raycluster_runtime_env_resolves_to_the_requirements_file() -> None:
    """`ray job submit --runtime-env clusters/runtime_env.yaml` from the repository root: Ray reads
    the pip file there (the RayCluster's stock image has Ray only)."""
    from ray.runtime_env import RuntimeEnv

    data = yaml.safe_load((CLUSTERS / "runtime_env.yaml").read_text())
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        env = RuntimeEnv(**data)
    finally:
        os.chdir(cwd)
    assert pins(env["pip"]["packages"]) == pins(REQUIREMENTS.read_text().splitlines())
    cluster = next(d for d in yaml.safe_load_all((CLUSTERS / "kuberay" / "raycluster.yaml").read_text()) if d)
    ray = pins(REQUIREMENTS.read_text().splitlines())["ray"]
    assert cluster["spec"]["rayVersion"] == pinned_version(ray)
