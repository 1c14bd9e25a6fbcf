"""Container images for the docker backend, built without a container registry.

``orbitmesh image build --offline`` makes two images:

* ``orbitmesh-base:<hash>``: a Debian root file system from ``debootstrap`` (same suite as this
  machine's apt sources) with python3, python3-venv, mosquitto and ca-certificates, loaded with
  ``docker import``. The hash covers the suite, the architecture and the package list, so it is
  built once per machine and kept.
* ``orbitmesh:<hash>`` (and ``orbitmesh:latest``): the base plus a venv at ``/opt/orbitmesh``
  holding orbitmesh installed from wheels with ``pip --no-index``. The wheels are made on the
  host (``pip wheel`` of the project, ``pip download`` of its dependencies for the base's Python
  and glibc), and the build runs with no network. The hash covers the project's source files,
  pyproject.toml and the base, so the image is rebuilt only when the project changes.

The same image runs the broker (mosquitto), the controller and the workers. This module names the
images and finds them on the daemon; image_build.py builds them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orbitmesh.errors import InputError, RunError

BASE_REPOSITORY = "orbitmesh-base"
REPOSITORY = "orbitmesh"
LATEST = f"{REPOSITORY}:latest"
BASE_PACKAGES = ("python3", "python3-venv", "mosquitto", "ca-certificates",
                 # what a container endpoint's test network needs (docs/endpoints.md)
                 "iputils-ping", "iperf3", "netcat-openbsd",
                 # `ip`: a worker container moves a node's TUN into a user's container
                 "iproute2")
RECIPE_VERSION = "1"
"""Bump when the build recipe changes in a way the hashed inputs do not show."""
IMAGE_LABEL = "orbitmesh.image"
"""``base`` or ``project``: how `orbitmesh image` finds its own images."""
SOURCE_DIRS = ("orbitmesh", "nodes", "broker")
SOURCE_FILES = ("pyproject.toml", "README.md")
VENV = "/opt/orbitmesh"
NUMBA_CACHE = f"{VENV}/numba-cache"
PROJECT_ROOT = Path(__file__).resolve().parents[3]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class AptSource:
    """Where this machine's Debian packages come from."""

    mirror: str
    suite: str


def apt_source(sources_dir: Path = Path("/etc/apt/sources.list.d"),
               sources_list: Path = Path("/etc/apt/sources.list")) -> AptSource:
    """The first plain Debian suite in this machine's apt sources (deb822 files, then the list)."""
    for path in sorted(sources_dir.glob("*.sources")):
        for block in re.split(r"\n\s*\n", path.read_text()):
            fields = _deb822(block)
            if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
                continue
            suites = [s for s in fields.get("suites", "").split() if "-" not in s]
            uris = fields.get("uris", "").split()
            if suites and uris and "security" not in uris[0]:
                return AptSource(uris[0], suites[0])
    if sources_list.is_file():
        for line in sources_list.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and "-" not in words[2]:
                return AptSource(words[1], words[2])
    raise RunError(f"no Debian suite found in {sources_dir}/*.sources or {sources_list}; "
                   "the offline image build takes its packages from this machine's apt sources")


def _deb822(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in block.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        fields[key] = value.strip()
    return fields


def base_tag(suite: str, packages: Iterable[str] = BASE_PACKAGES,
             arch: str | None = None) -> str:
    """``orbitmesh-base:<hash of suite, architecture and package list>``."""
    text = "\n".join([RECIPE_VERSION, suite, arch or platform.machine(), *sorted(packages)])
    return f"{BASE_REPOSITORY}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def source_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """The files a project wheel is built from, relative to ``root``, sorted."""
    if not (root / "pyproject.toml").is_file():
        raise RunError(f"{root} holds no pyproject.toml: building an image needs the orbitmesh "
                       "source tree (a git checkout); pass --image to use an existing image")
    files = [Path(name) for name in SOURCE_FILES if (root / name).is_file()]
    for top in SOURCE_DIRS:
        for path in sorted((root / top).rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
                files.append(rel)
    return sorted(files)


def project_hash(base: str, root: Path = PROJECT_ROOT) -> str:
    """Hash of the project's source files, the base image tag and the build recipe."""
    digest = hashlib.sha256()
    digest.update(f"{RECIPE_VERSION}\n{base}\n{offline_dockerfile(base)}\n".encode())
    for rel in source_files(root):
        digest.update(f"{rel.as_posix()}\n".encode())
        digest.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return digest.hexdigest()[:12]


def project_tag(base: str, root: Path = PROJECT_ROOT) -> str:
    """``orbitmesh:<project hash>``: the image this source tree builds."""
    return f"{REPOSITORY}:{project_hash(base, root)}"


# Compiles the tick's kernels (routing, route repair, GSLs) into the image's numba cache, so
# controllers start warm.
_WARM_UP = "from orbitmesh.core.engine import compile_kernels; compile_kernels()"


def offline_dockerfile(base: str) -> str:
    """The Dockerfile of the project image: the venv from local wheels, no network."""
    return f"""FROM {base}
COPY wheels /tmp/wheels
RUN python3 -m venv {VENV} \\
 && {VENV}/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \\
      --find-links /tmp/wheels 'orbitmesh[docker]' \\
 && rm -rf /tmp/wheels \\
 && mkdir -p {NUMBA_CACHE} \\
 && (NUMBA_CACHE_DIR={NUMBA_CACHE} {VENV}/bin/python -c "{_WARM_UP}" \\
     || echo "numba warm-up failed: routing compiles on first use") \\
 && chmod -R a+rwX {NUMBA_CACHE}
ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    NUMBA_CACHE_DIR={NUMBA_CACHE} PYTHONUNBUFFERED=1 HOME=/tmp
CMD ["orbitmesh", "--help"]
"""


def docker_client() -> Any:
    """A docker SDK client for the local daemon (DOCKER_HOST and friends are honoured)."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:
        raise RunError("the docker backend needs the docker SDK: pip install 'orbitmesh[docker]'"
                       ) from exc
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not os.path.exists(host.removeprefix("unix://")):
        # Checked here: the SDK leaks the socket of a failed connection to a missing path.
        raise RunError(f"cannot reach the docker daemon: no socket at {host.removeprefix('unix://')}"
                       "; start dockerd, or set DOCKER_HOST to a running one")
    client = None
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        if client is not None:
            client.close()  # else its socket lingers until garbage collection
        raise RunError(f"cannot reach the docker daemon ({exc}); start dockerd, or set "
                       "DOCKER_HOST to a running one") from exc
    return client


def image_exists(client: Any, tag: str) -> bool:
    """True when the daemon has an image with this tag."""
    from docker.errors import ImageNotFound

    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def require_image(client: Any, tag: str) -> None:
    """Refuse (exit 2) an image this daemon does not hold: orbitmesh never pulls one."""
    from docker.errors import APIError, ImageNotFound

    advice = ("orbitmesh never pulls images: build it with `orbitmesh image build --offline`, "
              "bring it with `docker save | docker load`, or pick one from `orbitmesh image list`")
    try:
        client.images.get(tag)
    except ImageNotFound:
        raise InputError(f"image {tag!r} is not on this docker daemon; {advice}") from None
    except APIError as exc:  # an invalid reference ("Bad:Name!") is refused by the daemon
        raise InputError(f"image {tag!r}: {exc.explanation or exc}; {advice}") from None


def default_image(client: Any) -> str:
    """The image `orbitmesh up` uses: this source tree's build, else ``orbitmesh:latest``."""
    with contextlib.suppress(RunError):
        base = base_tag(apt_source().suite)
        tag = project_tag(base)
        if image_exists(client, tag):
            return tag
    if image_exists(client, LATEST):
        return LATEST
    raise RunError("no orbitmesh image on this docker daemon; build one with "
                   "`orbitmesh image build --offline` (or pass --image TAG)")


def project_images(client: Any) -> list[Any]:
    """Every project image this machine's daemon holds, newest first."""
    images = client.images.list(filters={"label": f"{IMAGE_LABEL}=project"})
    return sorted(images, key=lambda i: str(i.attrs.get("Created", "")), reverse=True)


def prune_project_images(client: Any, keep: int = 2) -> list[str]:
    """Remove all but the ``keep`` newest project images that no container uses; their tags."""
    from docker.errors import APIError

    removed: list[str] = []
    for image in project_images(client)[keep:]:
        if any(not re.fullmatch(rf"{REPOSITORY}:[0-9a-f]{{12}}", tag) for tag in image.tags):
            continue  # latest, or a tag someone gave it on purpose
        try:
            client.images.remove(image.id)
        except APIError:
            continue  # a container still uses it
        removed.extend(image.tags or [image.short_id])
    return removed


def describe_image(client: Any, tag: str) -> dict[str, Any]:
    """Tag, id, size and labels of an image (for `orbitmesh image` listings)."""
    image = client.images.get(tag)
    return {"tags": image.tags, "id": image.short_id, "labels": image.labels,
            "size_mb": round(float(image.attrs.get("Size", 0)) / 1e6, 1),
            "created": image.attrs.get("Created")}
