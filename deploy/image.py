"""The production images, built from the models in the BentoML store (`make container`), and run where no container
runtime can start one.

    python -m deploy.image build [--flavour cpu|gpu] [--int8]   # embedding-server:cpu (or :gpu) and :<bento version>
    python -m deploy.image run [--port 3000] [-e NAME=VALUE ...]

build:
1. cpu: a model store of the image's own (build/cpu/bentoml-home), into which import_models.py --onnx-only imports the
   main store's models again: the ONNX exports, checked against PyTorch, without the PyTorch weights, which the CPU
   image never reads (CLIP's weights are 600 MB). gpu: the main store as it is.
2. `bentoml build` of the flavour's bentofile (bentofile.cpu.yaml, bentofile.yaml) in that store.
3. `bentoml containerize` with the engine the machine has: Docker where a Docker engine answers, else buildah with
   chroot isolation (installed from Debian's packages when missing). Where the base image cannot be pulled (no
   registry reachable), a stand-in python:3.11-slim is made from Debian's packages first (STANDIN_BASE); everywhere
   else the real base is pulled.

run starts the image with buildah's chroot isolation, for a machine where no OCI runtime can start a container (such a
process shares the host's network, so the server binds the host's port); elsewhere `docker run -p 3000:3000 IMAGE`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "embedding-server"
BENTOFILES = {"cpu": ROOT / "bentofile.cpu.yaml", "gpu": ROOT / "bentofile.yaml"}
CPU_STORE = ROOT / "build" / "cpu" / "bentoml-home"
SLIM_BASE = "docker.io/library/python:3.11-slim"
STANDIN_BASE = ROOT / "deploy" / "container" / "standin-base.Containerfile"
# What a slim Python image holds, from Debian bookworm's packages.
STANDIN_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
CONTAINER_TOOLS = ("buildah", "podman", "mmdebstrap")
MODELS_LABEL = "org.embedding-server.models"


class BuildFailed(Exception):
    """A step of the build failed; the message says which and why."""


@dataclass(frozen=True)
class Built:
    bento: str
    images: list[str]
    size_bytes: int
    seconds: float
    models: dict[str, str]


def bin_path(name: str) -> str:
    """A command of this Python's environment (the venv), else of PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def run(command: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
    """Runs `command`, its output passing through; BuildFailed on failure."""
    print("+", " ".join(command), flush=True)
    returncode = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}).returncode
    if returncode != 0:
        raise BuildFailed(f"{subprocess.list2cmdline(command[:3])} exited with {returncode}")


def output(command: list[str], env: dict[str, str] | None = None) -> str:
    """The stdout of `command` (its stderr passing through); BuildFailed on failure."""
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise BuildFailed(f"{subprocess.list2cmdline(command[:3])} exited with {result.returncode}")
    return result.stdout


def image_config(image: str) -> dict:
    """`podman image inspect` of `image`: its tags, size, labels, entrypoint, user and ports."""
    return json.loads(output(["podman", "image", "inspect", image]))[0]


def docker_answers() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "info"], capture_output=True).returncode == 0


def ensure_container_tools() -> None:
    """buildah, podman and mmdebstrap, installed from Debian's packages when missing (deploy/system-packages.sh)."""
    if not all(shutil.which(tool) for tool in CONTAINER_TOOLS):
        run([str(ROOT / "deploy" / "system-packages.sh")])
    if missing := [tool for tool in CONTAINER_TOOLS if not shutil.which(tool)]:
        raise BuildFailed(f"no Docker engine, and {', '.join(missing)} could not be installed")


def ensure_base(base: str) -> None:
    """Makes `base` available to buildah: present, pulled, or (python:3.11-slim alone) a stand-in made here."""
    if subprocess.run(["podman", "image", "exists", base]).returncode == 0:
        return
    pulled = subprocess.run(["podman", "pull", base], capture_output=True, text=True)
    if pulled.returncode == 0:
        return
    if base != SLIM_BASE:
        raise BuildFailed(f"cannot pull the base image {base}: {pulled.stderr.strip()}")
    print(f"cannot pull {base} (no registry reachable): making a stand-in from Debian's packages", flush=True)
    with tempfile.TemporaryDirectory(prefix="standin-base-") as scratch:
        context = Path(scratch)
        rootfs = context / "rootfs.tar"
        run(["mmdebstrap", "--variant=minbase", f"--include={STANDIN_PACKAGES}", "bookworm", str(rootfs)])
        run(["podman", "import", str(rootfs), "localhost/standin-base-rootfs:bookworm"])
        # pip and uv in the image reach the package registry through the same TLS proxy, if any, as this machine: its
        # CA bundle (the one pip's config names) joins the image's trust store.
        shutil.copy(host_ca_bundle(), context / "host-ca-bundle.crt")
        run(["buildah", "bud", "--isolation", "chroot", "-f", str(STANDIN_BASE), "-t", base, str(context)])


def host_ca_bundle() -> str:
    configured = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True, text=True
    ).stdout.strip()
    return configured or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"


def store_onnx_only(main_home: Path, into: Path, int8: bool = False) -> None:
    """The CPU image's store: each model of the main store imported again with --onnx-only (and --int8, for an image
    that may run QUANTIZE=int8)."""
    from embedding_server.model_store import store_name
    from embedding_server.settings import get_settings

    settings = get_settings()
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    sources = []
    for option, model_id in (
        ("--text-source", settings.text_model_name),
        ("--image-source", settings.image_model_name),
    ):
        if model_id:
            sources += [option, stored_model_path(main_home, store_name(model_id))]
    options = ["--onnx-only", *(["--int8"] if int8 else [])]
    run([sys.executable, "import_models.py", *options, *sources], env={"BENTOML_HOME": str(into)})


def store_path(home: Path, expression: str) -> Path:
    """A path that `expression` (Python, with `bentoml` imported) gives in the store at `home`; BuildFailed when it
    cannot (BentoML's CLI wraps long paths at the terminal's width)."""
    found = subprocess.run(
        [sys.executable, "-c", f"import bentoml; print({expression})"],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise BuildFailed(f"{expression} failed in the store {home}: {found.stderr.strip().splitlines()[-1]}")
    return Path(found.stdout.strip())


def stored_model_path(home: Path, name: str) -> str:
    """The folder of the newest stored version of model `name` in the store at `home`."""
    try:
        return str(store_path(home, f"bentoml.models.get({name!r}).path"))
    except BuildFailed as exc:
        raise BuildFailed(f"{name} is not in the store {home}: run python import_models.py") from exc


def build(flavour: str, main_home: Path, image: str = IMAGE, cpu_home: Path = CPU_STORE, int8: bool = False) -> Built:
    started = time.monotonic()
    home = main_home
    if flavour == "cpu":
        store_onnx_only(main_home, cpu_home, int8)
        home = cpu_home
    env = {"BENTOML_HOME": str(home)}
    build_command = [bin_path("bentoml"), "build", "-f", str(BENTOFILES[flavour]), "--output", "tag", "."]
    bento = output(build_command, env).strip().splitlines()[-1].removeprefix("__tag__:")
    version = bento.split(":")[1]
    bento_dir = store_path(home, f"bentoml.get({bento!r}).path")
    manifest = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    models = {service["name"]: model["tag"] for service in manifest["services"] for model in service["models"]}
    tags = [f"{image}:{flavour}", f"{image}:{version}"]
    labels = [
        f"label=org.opencontainers.image.version={version}",
        f"label={MODELS_LABEL}={','.join(f'{s}={t}' for s, t in sorted(models.items()))}",
    ]
    containerize = [bin_path("bentoml"), "containerize", bento, *(f"--image-tag={tag}" for tag in tags)]
    containerize += [f"--opt={label}" for label in labels]
    # BentoML 1.4.40 copies the Bento into a temporary folder and then refuses to read the dockerfile_template there,
    # "outside of the current working directory", unless that directory contains it: hence `/`.
    if docker_answers():
        run(containerize, env=env, cwd=Path("/"))
        size = int(output(["docker", "image", "inspect", "--format", "{{.Size}}", tags[0]]))
    else:
        ensure_container_tools()
        ensure_base(base_image(bento_dir))
        run([*containerize, "--backend", "buildah"], env={**env, "BUILDAH_ISOLATION": "chroot"}, cwd=Path("/"))
        size = image_config(tags[0])["Size"]
    return Built(bento, tags, size, time.monotonic() - started, models)


def base_image(bento_dir: Path) -> str:
    """The FROM of the Bento's generated Dockerfile, as a fully qualified name."""
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    name = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM "))
    return name if "/" in name.split(":")[0] else f"docker.io/library/{name}"


def run_command(image: str) -> list[str]:
    """The command that the image's ENTRYPOINT and CMD make, as `docker run` would run it."""
    config = image_config(image)["Config"]
    return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]


def start(image: str, env: dict[str, str], command: list[str] | None = None, **popen) -> tuple[str, subprocess.Popen]:
    """Starts `image` (or `command` in it) with buildah's chroot isolation: (the working container's name, the running
    `buildah run`). Remove the working container with `buildah rm NAME` once the process has exited."""
    container = output(["buildah", "from", image]).strip()
    options = [f"--env={key}={value}" for key, value in env.items()]
    buildah_run = ["buildah", "run", "--isolation", "chroot", *options, container, "--"]
    return container, subprocess.Popen([*buildah_run, *(command or run_command(image))], **popen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_command = commands.add_parser("build", help="build the image from the models in the store")
    build_command.add_argument("--flavour", choices=sorted(BENTOFILES), default="cpu")
    build_command.add_argument(
        "--int8", action="store_true", help="the CPU image's store with the int8 exports too (QUANTIZE=int8; ~2 min)"
    )
    build_command.add_argument("--image", default=IMAGE, help="the image's name (default %(default)s)")
    run_parser = commands.add_parser("run", help="run the image with buildah's chroot isolation")
    run_parser.add_argument("--image", default=f"localhost/{IMAGE}:cpu")
    run_parser.add_argument("--port", type=int, default=3000)
    run_parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)

    if args.command == "run":
        env = {"PORT": str(args.port), **dict(item.split("=", 1) for item in args.env)}
        container, process = start(args.image, env)
        try:
            return process.wait()
        except KeyboardInterrupt:
            return process.wait()
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True)

    main_home = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    try:
        built = build(args.flavour, main_home, args.image, int8=args.int8)
    except BuildFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"built {', '.join(built.images)} from {built.bento} in {built.seconds:.0f} s: {built.size_bytes / 1e9:.2f} GB"
    )
    for service, tag in sorted(built.models.items()):
        print(f"  {service}: {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
