"""What Kubernetes does with the deploy kit's manifests, done here without a cluster.

The kubelet's part: a container's environment (``envFrom``, ``env`` with ``valueFrom`` and
``$(VAR)`` expansion, in that order), its command line (the image's ``ENTRYPOINT`` unless the
container names a ``command``, then its ``args`` expanded), its volumes as host folders (a
claim shared by every pod, an ``emptyDir`` and a Secret's files new for each pod), the image's
own files (the Dockerfile's ``COPY`` lines). The Job controller's part: what a
``podFailurePolicy`` does with an exit code. And label selectors, as a NetworkPolicy or a
Service reads them.

What stands in for the cluster: the image's virtual environment is this one's (its
``facematch-async`` and ``uvicorn``), other images' binaries are named by the test (the
redis-server that the test extra ships), a Service's DNS name maps to a loopback port, and a
container port to a free one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent

Manifest = dict[str, Any]


# --- The kit's files -------------------------------------------------------------------------


def kustomizations() -> list[Path]:
    """Every ``kustomization.yaml`` of the kit."""
    return sorted(KIT.rglob("kustomization.yaml"))


def manifest_files() -> list[Path]:
    """Every YAML file of the kit that holds Kubernetes objects."""
    return [path for path in sorted(KIT.rglob("*.yaml")) if path.name != "kustomization.yaml"]


def load_all(path: Path) -> list[Manifest]:
    """The documents of one YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def objects() -> dict[tuple[str, str], Manifest]:
    """Every object of the kit by ``(kind, name)``."""
    found: dict[tuple[str, str], Manifest] = {}
    for path in manifest_files():
        for doc in load_all(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} is defined twice"
            found[key] = doc
    return found


def find(kind: str, name: str) -> Manifest:
    """One object of the kit."""
    return objects()[(kind, name)]


def pod_template(doc: Manifest) -> Manifest:
    """The pod (``metadata`` and ``spec``) that a workload object runs."""
    kind = doc["kind"]
    if kind == "Pod":
        return doc
    if kind == "CronJob":
        template: Manifest = doc["spec"]["jobTemplate"]["spec"]["template"]
        return template
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        template = doc["spec"]["template"]
        return template
    raise KeyError(f"{kind} runs no pods")


def job_spec(doc: Manifest) -> Manifest:
    """A Job's spec, or the spec of the Jobs a CronJob creates."""
    spec: Manifest = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return spec


def containers(pod: Manifest) -> list[Manifest]:
    """A pod's init containers and containers."""
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(doc: Manifest, name: str) -> Manifest:
    """The container called ``name`` in a workload's pod."""
    (found,) = [c for c in containers(pod_template(doc)) if c["name"] == name]
    return found


# --- Kubernetes' rules -----------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` expanded as the kubelet does: a defined variable's value, ``$$`` for a
    literal ``$``, and a reference to an undefined variable left as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(one, text)


def policy_action(
    job: Manifest, container_name: str, exit_code: int, conditions: Iterable[str] = ()
) -> str:
    """What the Job controller does with a pod of ``job`` whose container ended so.

    ``Succeeded`` for exit 0; else the action of the first rule of the ``podFailurePolicy``
    that matches (``Ignore``, ``FailJob``, ``FailIndex``, ``Count``), and ``Count`` when none
    does (the backoff limit counts it). ``conditions`` are the pod's conditions that are True
    (``DisruptionTarget`` for an evicted or preempted pod).
    """
    if exit_code == 0:
        return "Succeeded"
    held = set(conditions)
    for rule in job_spec(job).get("podFailurePolicy", {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if codes is not None and codes.get("containerName", container_name) == container_name:
            listed = exit_code in codes["values"]
            if listed == (codes["operator"] == "In"):
                return str(rule["action"])
        for condition in rule.get("onPodConditions", []):
            if condition["type"] in held and condition.get("status", "True") == "True":
                return str(rule["action"])
    return "Count"


def selects(selector: Manifest, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (``matchLabels``, ``matchExpressions``) picks ``labels``."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


# --- The image -------------------------------------------------------------------------------


@dataclass
class Image:
    """What the Dockerfile's last stage gives a container: its entry point, default
    arguments, working folder, user, and the files it copies from the build context."""

    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    user: str
    files: list[tuple[str, str]]  # (source in the context, destination in the image)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        word, _, rest = whole.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def read_image(path: Path = DOCKERFILE) -> Image:
    """The last stage of the Dockerfile."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions(path.read_text()):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    image = Image(entrypoint=[], cmd=[], workdir="/", user="root", files=[])
    for word, rest in stages[-1]:
        if word == "ENTRYPOINT":
            image.entrypoint = json.loads(rest)  # the exec form: no shell in between
        elif word == "CMD":
            image.cmd = json.loads(rest)
        elif word == "WORKDIR":
            image.workdir = rest
        elif word == "USER":
            image.user = rest
        elif word == "COPY" and "--from" not in rest:
            *sources, destination = rest.split()
            image.files += [(source, destination) for source in sources]
    return image


# --- Pods on this machine --------------------------------------------------------------------


@dataclass
class Pod:
    """One container of a pod, running as a process here."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float = 120) -> int:
        """The container's exit code (the process's; 128 + N for a signal, as a runtime says)."""
        code = self.process.wait(timeout)
        return 128 - code if code < 0 else code

    def terminate(self) -> None:
        """What the kubelet does to stop a pod: SIGTERM (the image's STOPSIGNAL)."""
        self.process.send_signal(signal.SIGTERM)

    def output(self) -> str:
        """Everything the container wrote to stdout and stderr (its ``kubectl logs``)."""
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    """The cluster a test deploys the kit to: Secrets, ConfigMaps, Services and volumes.

    Args:
        root: a folder for the volumes, each pod's files and the image's files.
        secrets: the Secrets deploy/README.md creates, ``{name: {key: value}}``.
        config: ConfigMaps by name; starts from the kit's, a test edits what a user would.
        services: a Service's ``name:port`` to the loopback ``host:port`` standing in for it.
        binaries: a command of another image (``redis-server``) to its program here.
    """

    root: Path
    secrets: dict[str, dict[str, str]]
    config: dict[str, dict[str, str]] = field(default_factory=dict)
    services: dict[str, str] = field(default_factory=dict)
    binaries: dict[str, str] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)

    def __post_init__(self) -> None:
        for (kind, name), doc in objects().items():
            if kind == "ConfigMap":
                self.config.setdefault(name, dict(doc.get("data", {})))
        self.image = read_image()
        self.image_root = self.root / "image"
        for source, destination in self.image.files:
            target = self.image_root / destination.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Kill whatever still runs: a failed test leaves no process behind."""
        for pod in self.pods:
            if pod.process.poll() is None:
                pod.process.kill()
                pod.process.wait()

    def environment(
        self, box: Manifest, index: int | None, mounts: Mapping[str, Path]
    ) -> dict[str, str]:
        """A container's variables as the kubelet sets them: ``envFrom`` first, then ``env``
        in order, each ``value`` expanded against the variables before it. The manifest's own
        text is read as on this machine (:meth:`on_host`); values from ConfigMaps and Secrets
        are the test's, already so."""
        env: dict[str, str] = {}
        for source in box.get("envFrom", []):
            if "configMapRef" in source:
                ref = source["configMapRef"]
                found = self.config.get(ref["name"])
            else:
                ref = source["secretRef"]
                found = self.secrets.get(ref["name"])
            if found is None:
                assert ref.get("optional"), f"{ref['name']} does not exist and is not optional"
                continue
            env.update({source.get("prefix", "") + key: value for key, value in found.items()})
        annotations = {"batch.kubernetes.io/job-completion-index": str(index)}
        for variable in box.get("env", []):
            name = variable["name"]
            if "value" in variable:
                env[name] = expand(self.on_host(variable["value"], mounts, {}), env)
                continue
            source = variable["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[name] = self.secrets[ref["name"]][ref["key"]]
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                env[name] = self.config[ref["name"]][ref["key"]]
            else:
                path = source["fieldRef"]["fieldPath"]
                match = re.fullmatch(r"metadata\.annotations\['([^']+)'\]", path)
                assert match is not None and index is not None, f"no value for {path}"
                env[name] = annotations[match.group(1)]
        if index is not None:  # the Job controller sets it in an Indexed Job's pods
            env.setdefault("JOB_COMPLETION_INDEX", str(index))
        return env

    def volumes(self, pod: Manifest, box: Manifest, folder: Path) -> dict[str, Path]:
        """Each mount path of ``box`` to the host folder that holds its volume."""
        declared = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in box.get("volumeMounts", []):
            volume = declared[mount["name"]]
            if "persistentVolumeClaim" in volume:  # one claim, every pod: the results
                host = self.root / "claims" / volume["persistentVolumeClaim"]["claimName"]
            else:  # a new pod, a new emptyDir and new Secret files
                host = folder / "volumes" / mount["name"]
            host.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                values = self.secrets[volume["secret"]["secretName"]]
                items = volume["secret"].get("items") or [
                    {"key": key, "path": key} for key in values
                ]
                for item in items:
                    file = host / item["path"]
                    file.write_text(values[item["key"]])
                    file.chmod(volume["secret"].get("defaultMode", 0o644))
            mounts[mount["mountPath"]] = host
        return mounts

    def start(
        self,
        doc: Manifest,
        container_name: str,
        *,
        index: int | None = None,
        env: Mapping[str, str] | None = None,
        append: Sequence[str] = (),
        ports: Mapping[int, int] | None = None,
    ) -> Pod:
        """Start one container of ``doc``'s pod (``index``: an Indexed Job's completion index),
        after its init containers have run to completion, as the kubelet starts a pod.

        Args:
            env: variables the cluster adds (``DEEPVUE_BASE_URL``: the sandbox stands in for
                Deepvue's production, the default).
            append: arguments after the container's own (a Redis port on loopback).
            ports: a container port to the free loopback port it listens on here.
        """
        pod = pod_template(doc)
        number = index if index is not None else 0
        name = f"{doc['metadata']['name']}-{number}-{uuid.uuid4().hex[:8]}"  # as pods are named
        folder = self.root / "pods" / name
        folder.mkdir(parents=True)
        for init in pod["spec"].get("initContainers", []):
            step = self._run(pod, init, folder, index, env or {}, (), {})
            assert step.wait() == 0, f"init container {init['name']}: {step.output()}"
        box = container(doc, container_name)
        return self._run(pod, box, folder, index, env or {}, append, ports or {})

    def _run(
        self,
        pod: Manifest,
        box: Manifest,
        folder: Path,
        index: int | None,
        env: Mapping[str, str],
        append: Sequence[str],
        ports: Mapping[int, int],
    ) -> Pod:
        mounts = self.volumes(pod, box, folder)
        mounts.update({self.image.workdir: self.image_root / self.image.workdir.lstrip("/")})
        variables = self.environment(box, index, mounts)
        command = box.get("command") or self.image.entrypoint
        args = box.get("args", [] if "command" in box else self.image.cmd)
        argv = [expand(self.on_host(part, mounts, ports), variables)
                for part in [*command, *args]] + list(append)  # fmt: skip
        argv[0] = self.binaries.get(argv[0]) or shutil.which(argv[0], path=str(VENV_BIN)) or ""
        assert argv[0], f"{command[0]} is neither in the image's virtual environment nor named"
        process_env = {
            "PATH": os.pathsep.join([str(VENV_BIN), "/usr/bin", "/bin"]),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            **variables,
            **env,
        }
        if "/tmp" in mounts:  # noqa: S108 (the container's /tmp, an emptyDir)
            process_env["TMPDIR"] = str(mounts["/tmp"])  # noqa: S108
        ours = box["image"] == "facematch-async"  # the kit's image: its WORKDIR
        log = folder / f"{box['name']}.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(  # noqa: S603 (the manifest's own command line)
                argv,
                env=process_env,
                cwd=mounts[self.image.workdir] if ours else folder,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        started = Pod(folder.name, argv, process_env, process, log)
        self.pods.append(started)
        return started

    def on_host(self, text: str, mounts: Mapping[str, Path], ports: Mapping[int, int]) -> str:
        """A container's path as the host folder of its volume; a Service's name and port as
        the loopback address standing in for it; the container's own port as a free one."""
        if mounts:  # one pass: a host folder put in is never read as a container path
            paths = "|".join(map(re.escape, sorted(mounts, key=len, reverse=True)))
            pattern = r"(?<![\w./-])(" + paths + r")(?=/|$|[^\w.-])"
            text = re.sub(pattern, lambda match: str(mounts[match.group(1)]), text)
        for service, address in self.services.items():
            text = re.sub(r"(?<![\w.-])" + re.escape(service) + r"(?![\w.-])", address, text)
        for inside, outside in ports.items():
            if text == f"--port={inside}":
                text = f"--port={outside}"
        if text == "--host=0.0.0.0":  # the pod's own network; here only loopback
            text = "--host=127.0.0.1"
        return text
