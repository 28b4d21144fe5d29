"""Static checks of the Dockerfile and .dockerignore (no Docker engine on these machines).

Both targets exist and end as a non-root user; each installs its lock from requirements/,
hash-checked, and nothing else but the project itself (--no-deps); the operator's lock holds no
torch, the trainer's the pinned one; everything COPY needs is in the build context and
the context leaves out .venv, runs/ and .git; image names, UID and ports agree with the operator's
settings and the chart.

    pytest tests/unit/deploy/test_dockerfile.py
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from speedrun_operator import labels as L
from speedrun_operator.settings import DEFAULT_TPU_TRAINER_IMAGE, DEFAULT_TRAINER_IMAGE, OperatorSettings
from tests.support.helpers import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VALUES = yaml.safe_load((ROOT / "charts" / "speedrun-operator" / "values.yaml").read_text())


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)
    run_flags: list[str] = field(default_factory=list)  # every RUN's flags, e.g. --mount=type=cache,...

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name): comments dropped, continuation lines joined."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical:
        instruction, _, args = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.match(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            stage = Stage(name=match.group(2), base=match.group(1))
            stages[stage.name] = stage
        elif stage is None:
            assert instruction == "ARG", line
            name, _, default = args.strip().partition("=")
            global_args[name] = default
        else:
            args = args.strip()
            if instruction == "RUN":  # its flags (--mount=...) apart from the command
                while args.startswith("--"):
                    flag, _, args = args.partition(" ")
                    stage.run_flags.append(flag)
                    args = args.strip()
            stage.instructions.append((instruction, args))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())


def closure(name: str) -> list[Stage]:
    """The stage and every stage it builds on (FROM <stage>, COPY --from=<stage>)."""
    seen: list[Stage] = []
    todo = [name]
    while todo:
        stage = STAGES[todo.pop()]
        if stage in seen:
            continue
        seen.append(stage)
        todo += [stage.base] if stage.base in STAGES else []
        todo += [m for args in stage.all("COPY") for m in re.findall(r"--from=(\S+)", args) if m in STAGES]
    return seen[::-1]  # in build order: what a stage builds on comes before it


def pip_installs(stages: list[Stage]) -> list[str]:
    return [
        part.strip()
        for stage in stages
        for run in stage.all("RUN")
        for part in re.split(r"&&|;|\|\|", run)
        if "pip install" in part
    ]


def test_the_targets_exist() -> None:
    assert {"operator", "trainer", "trainer-tpu"} <= set(STAGES)


@pytest.mark.parametrize("target", ["operator", "trainer", "trainer-tpu"])
def test_target_runs_as_the_non_root_user_the_pods_expect(target: str) -> None:
    users = STAGES[target].all("USER")
    assert users, f"{target}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so the kubelet can verify runAsNonRoot"
    assert int(uid) == OperatorSettings().run_as_user == VALUES["trainer"]["runAsUser"]
    assert int(uid) == VALUES["podSecurityContext"]["runAsUser"]


def test_operator_target_has_no_torch() -> None:
    installs = pip_installs(closure("operator"))
    assert installs, "the operator stage installs the package"
    for install in installs:
        assert "torch" not in install and "[train" not in install, install
    lock = (ROOT / "requirements" / "operator.txt").read_text()
    assert "\nkopf==" in lock and "\ntorch==" not in lock


@pytest.mark.parametrize(
    ("target", "lock"), [("operator", "operator"), ("trainer", "trainer"), ("trainer-tpu", "trainer-tpu")]
)
def test_target_installs_its_lock_and_nothing_unlocked(target: str, lock: str) -> None:
    stages = closure(target)
    installs = pip_installs(stages)
    copies = [args for stage in stages for args in stage.all("COPY")]
    [lock_copy] = [i for i, args in enumerate(copies) if args.startswith(f"requirements/{lock}.txt ")]
    dest = copies[lock_copy].split()[1].rstrip("/")
    assert dest.endswith("requirements"), copies[lock_copy]
    assert any(i.endswith(f"pip install --require-hashes -r {dest}/{lock}.txt".replace("//", "/")) for i in installs), (
        installs
    )
    unlocked = [i for i in installs if "--require-hashes" not in i and "--no-deps" not in i]
    assert not unlocked, f"{target}: installs outside the lock: {unlocked}"
    source = next(i for i, args in enumerate(copies) if args.startswith("api/ "))
    assert lock_copy < source, "the lock is in its own layer, before the source"


def test_pip_downloads_go_to_a_cache_mount_never_into_a_layer() -> None:
    """Every RUN that pip-installs mounts pip's cache (BuildKit, podman and buildah keep it on the
    build machine), so a rebuild downloads only what changed and no layer carries the cache."""
    mount = "--mount=type=cache,target=/root/.cache/pip,sharing=locked"
    for stage in STAGES.values():
        runs = [args for args in stage.all("RUN") if "pip install" in args]
        assert stage.run_flags.count(mount) == len(runs), (stage.name, stage.run_flags)
        assert not any("PIP_NO_CACHE_DIR" in env for env in stage.all("ENV")), "it would turn the cache off"


@pytest.mark.parametrize("target", ["trainer", "trainer-tpu"])
def test_trainer_source_is_its_last_layers_over_the_venv(target: str) -> None:
    """A source-only change rebuilds and pushes a few MB: each trainer stage installs the lock into
    its venv first (cached: it changes with the lock), then copies the source and installs it
    alone. One stage, no 5 GB COPY --from of a venv built elsewhere."""
    assert [stage.name for stage in closure(target)] == [target], "one stage"
    order = [(ins, args) for ins, args in STAGES[target].instructions if ins in ("RUN", "COPY")]
    assert not [args for ins, args in order if "--from=" in args], order
    lock = next(i for i, (ins, args) in enumerate(order) if "pip install --require-hashes" in args)
    source = [i for i, (ins, args) in enumerate(order) if ins == "COPY" and not args.startswith("requirements/")]
    assert source and lock < min(source), order
    install = order[max(source) + 1][1]
    assert "pip install --no-deps /src" in install and "rm -rf /src" in install, install


def test_trainer_lock_holds_the_pinned_torch_and_the_pods_extras() -> None:
    lock = (ROOT / "requirements" / "trainer.txt").read_text()
    header = lock.splitlines()[1]
    assert all(f"--extra {extra}" in header for extra in ("train", "wandb", "gcs", "fp8")), header
    pinned = set(re.findall(r"^([a-z0-9][a-z0-9._-]*)==", lock, re.MULTILINE))
    assert "\ntorch==2.13.0 " in lock  # requirements/constraints.in's pin
    assert {"numpy", "rich", "wandb", "s3fs", "gcsfs", "torchao"} <= pinned
    assert "torchx" not in pinned, "torchx is `speedrun run --launcher torchx` only, not the pods'"
    assert "BASE" in GLOBAL_ARGS and STAGES["trainer"].base == "${BASE}"


def test_tpu_trainer_target_is_python_3_12_with_jax_and_a_read_only_root() -> None:
    """jax 0.12 needs Python >= 3.12: the TPU stage is python:3.12's, the lock it installs is
    3.12's, and the final stage has HOME on the pods' /tmp emptyDir and exposes the ports the TPU
    pod builder names (jax.distributed's coordinator, the metrics)."""
    from speedrun_operator.builders.tpu import JAX_COORDINATOR_PORT

    assert STAGES["trainer-tpu"].base == "${TPU_PYTHON_IMAGE}"
    [check] = [run for run in STAGES["trainer-tpu"].all("RUN") if "import jax, torchax, torch, speedrun_trainer" in run]
    assert "pip install --no-deps /src" in check, "the installed image imports its stack, as it builds"
    assert "speedrun_trainer.train.jax_loop" in check, "jax_main's loop and step, whose imports the lock must hold"
    assert GLOBAL_ARGS["TPU_PYTHON_IMAGE"] == "python:3.12-slim-bookworm"
    assert "--python-version 3.12" in (ROOT / "requirements" / "trainer-tpu.txt").read_text().splitlines()[1]
    assert any("HOME=/tmp" in env for env in STAGES["trainer-tpu"].all("ENV"))
    ports = {int(p) for args in STAGES["trainer-tpu"].all("EXPOSE") for p in args.split()}
    assert {JAX_COORDINATOR_PORT, 9400} <= ports
    header = DOCKERFILE.read_text()
    assert f"--target trainer-tpu -t {DEFAULT_TPU_TRAINER_IMAGE}" in header
    repo, _, _tag = DEFAULT_TPU_TRAINER_IMAGE.rpartition(":")
    assert VALUES["trainer"]["tpuImage"]["repository"] == repo


def test_commands_and_ports_match_the_chart_and_the_builders() -> None:
    assert STAGES["operator"].all("CMD") == ['["speedrun", "operator"]']
    operator_ports = {int(p) for args in STAGES["operator"].all("EXPOSE") for p in args.split()}
    assert {VALUES["metrics"]["port"], VALUES["health"]["port"]} <= operator_ports
    trainer_ports = {int(p) for args in STAGES["trainer"].all("EXPOSE") for p in args.split()}
    assert {L.PORT_RENDEZVOUS, 9400} <= trainer_ports  # 9400: spec.metrics.port's default
    assert any("HOME=/tmp" in env for env in STAGES["trainer"].all("ENV")), "read-only root: HOME on the /tmp emptyDir"


def test_default_image_names_agree() -> None:
    header = DOCKERFILE.read_text()
    repo, _, tag = DEFAULT_TRAINER_IMAGE.rpartition(":")
    assert VALUES["trainer"]["image"]["repository"] == repo
    assert f"--target trainer  -t {DEFAULT_TRAINER_IMAGE}" in header
    assert f"--target operator -t {VALUES['image']['repository']}:{tag}" in header


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a pattern excludes a path or any of its parent directories;
    a leading `**/` matches at any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            tails = {"/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)}
            if any(fnmatch.fnmatch(tail, pattern[3:]) for tail in tails):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv", "runs", ".git", ".cache", "tests/unit/deploy/test_helm.py", "trainer/x/__pycache__"):
        assert ignored(path, patterns), path


def test_everything_copied_is_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    for stage in STAGES.values():
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not ignored(source.rstrip("/"), patterns), f"COPY {source}: excluded by .dockerignore"


def compile_check() -> str:
    """The Python code of the final trainer stage's `torch.compile` check (its RUN line)."""
    runs = [run for run in STAGES["trainer"].all("RUN") if "torch.compile" in run]
    assert len(runs) == 1, "the final trainer stage checks torch.compile once"
    match = re.search(r'python3 -c "(.+?)"', runs[0])
    assert match, runs[0]
    return match.group(1)


def test_trainer_image_carries_the_compilers_torch_compile_needs() -> None:
    """Triton builds its CUDA launcher with gcc on first use and inductor's CPU kernels are C++:
    the final stage (not only the build stage) installs both, and checks them as it builds."""
    installs = " ".join(run for run in STAGES["trainer"].all("RUN") if "apt-get install" in run)
    words = set(re.findall(r"[\w.+-]+", installs))
    assert {"gcc", "g++", "libc6-dev"} <= words, installs
    assert "python3-dev" in words, "a base without python3 needs Python.h for Triton's launcher"
    order = [(ins, args) for ins, args in STAGES["trainer"].instructions if ins in ("RUN", "COPY", "USER")]
    check = next(i for i, (_, args) in enumerate(order) if "torch.compile" in args)
    venv = next(i for i, (ins, args) in enumerate(order) if ins == "RUN" and "pip install --require-hashes" in args)
    user = max(i for i, (ins, _) in enumerate(order) if ins == "USER")
    assert venv < check < user, (
        "the check runs on the final venv, as root before USER, so its scratch cache can be removed"
    )


@pytest.mark.parametrize("with_compiler", [True, False])
def test_the_image_compile_check_passes_with_a_compiler_and_fails_without(with_compiler: bool, tmp_path: Path) -> None:
    """The exact check the image runs, run here: it passes with gcc/g++ on PATH and fails without
    them (what an image without a compiler would do on a GPU's first step)."""
    import os
    import shutil
    import subprocess
    import sys

    if with_compiler and not (shutil.which("g++") and shutil.which("gcc")):
        pytest.skip("no C/C++ compiler on this machine")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    if not with_compiler:
        env["PATH"] = str(tmp_path / "empty")  # nothing to run: no cc, no g++
        env.pop("CXX", None)
        env.pop("CC", None)
    proc = subprocess.run([sys.executable, "-c", compile_check()], env=env, capture_output=True, text=True)
    if with_compiler:
        assert proc.returncode == 0 and "inductor C++): ok" in proc.stdout, proc.stderr[-2000:]
    else:
        assert proc.returncode != 0 and "compiler" in proc.stderr.lower(), proc.stderr[-2000:]


def test_gpu_examples_render_the_cuda_trainer_image(capsys: pytest.CaptureFixture[str]) -> None:
    """`speedrun render` of every GPU example runs the default trainer image, and that image is the
    CUDA build: its lock holds PyPI's torch for Linux x86_64 with the CUDA runtime and NCCL wheels
    (the build the review found missing: a CPU torch would fail every GPU pod)."""
    from speedrun_api.accelerators import lookup
    from speedrun_api.manifest import load_job
    from speedrun_operator.operator_commands import main as operator_cli

    lock = (ROOT / "requirements" / "trainer.txt").read_text()
    assert re.search(r"^torch==2\.13\.0 ", lock, re.MULTILINE) and "+cpu" not in lock
    assert re.search(r"^nvidia-cuda-runtime==\d", lock, re.MULTILINE), "torch's CUDA runtime rides along"
    assert re.search(r"^nvidia-nccl-cu\d+==", lock, re.MULTILINE), "NCCL for multi-GPU all-reduce"
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    gpu = [p for p in examples if (acc := lookup(load_job(p).spec.resources.accelerator)) and acc.kind == "gpu"]
    assert len(gpu) >= 3, [p.name for p in examples]
    for path in gpu:
        assert operator_cli(["render", str(path)]) == 0
        objects = list(yaml.safe_load_all(capsys.readouterr().out))
        images = {
            c["image"]
            for o in objects
            if o and o.get("kind") == "Job"
            for c in o["spec"]["template"]["spec"]["containers"]
        }
        assert images == {DEFAULT_TRAINER_IMAGE}, (path.name, images)
