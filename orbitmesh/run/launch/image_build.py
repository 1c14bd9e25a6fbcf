"""``orbitmesh image build --offline``: debootstrap the base image, then build the project image
from wheels made on this machine, with no network and no registry (image.py says what each
image holds and how its tag is hashed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orbitmesh.errors import RunError
from orbitmesh.run.launch.image import (
    BASE_PACKAGES,
    IMAGE_LABEL,
    PROJECT_ROOT,
    REPOSITORY,
    AptSource,
    Progress,
    apt_source,
    base_tag,
    image_exists,
    offline_dockerfile,
    project_tag,
    source_files,
)

_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class BuildResult:
    """What `build_offline` made (or found already built)."""

    base_tag: str
    tag: str
    base_built: bool
    image_built: bool
    base_s: float
    image_s: float


def build_offline(client: Any, *, force: bool = False, progress: Progress | None = None,
                  cache_dir: Path | None = None, root: Path = PROJECT_ROOT) -> BuildResult:
    """Build (or find) the base and project images; ``force`` rebuilds both."""
    say = progress or (lambda _line: None)
    source = apt_source()
    base = base_tag(source.suite)
    started = time.monotonic()
    base_built = False
    if force or not image_exists(client, base):
        say(f"base image {base}: debootstrap {source.suite} with {', '.join(BASE_PACKAGES)}")
        build_base(client, base, source, say)
        base_built = True
    else:
        say(f"base image {base}: present")
    base_s = time.monotonic() - started
    tag = project_tag(base, root)
    started = time.monotonic()
    image_built = False
    if force or not image_exists(client, tag):
        say(f"project image {tag}: building wheels")
        build_project(client, base, tag, say, cache_dir=cache_dir, root=root)
        image_built = True
    else:
        say(f"project image {tag}: present (source unchanged)")
    client.images.get(tag).tag(REPOSITORY, "latest")
    return BuildResult(base, tag, base_built, image_built, base_s, time.monotonic() - started)


def build_base(client: Any, tag: str, source: AptSource, say: Progress) -> None:
    """debootstrap a minimal Debian with BASE_PACKAGES and `docker import` it as ``tag``."""
    if os.geteuid() != 0:
        raise RunError("debootstrap needs root: run `orbitmesh image build --offline` as root "
                       "(or with sudo)")
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.access(debootstrap, os.X_OK):
        raise RunError("debootstrap is not installed: apt-get install -y debootstrap")
    with tempfile.TemporaryDirectory(prefix="orbitmesh-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        command = [debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                   source.suite, str(rootfs), source.mirror]
        _run(command, say, "debootstrap")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        facts = rootfs_facts(rootfs)
        archive = Path(tmp) / "rootfs.tar"
        say(f"packing the root file system (python {facts['python']}, glibc {facts['glibc']})")
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(archive), "."], say, "tar")
        say(f"docker import -> {tag}")
        repository, _, version = tag.partition(":")
        changes = [f"LABEL {IMAGE_LABEL}=base",
                   *(f"LABEL orbitmesh.{key}={value}" for key, value in facts.items()),
                   "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   'CMD ["/bin/bash"]']
        from docker.errors import APIError

        try:
            client.api.import_image_from_file(str(archive), repository=repository, tag=version,
                                              changes=changes)
        except APIError as exc:
            raise RunError(f"docker import of the base image failed: {exc}") from exc
    if not image_exists(client, tag):
        raise RunError(f"docker import finished but {tag} is not there; see the dockerd log")


def rootfs_facts(rootfs: Path) -> dict[str, str]:
    """Python version, glibc version and architecture of a Debian root file system."""
    status = (rootfs / "var/lib/dpkg/status").read_text()
    glibc = re.search(r"^Package: libc6\n(?:[^\n]+\n)*?Version: (\d+)\.(\d+)", status, re.M)
    arch = re.search(r"^Package: libc6\n(?:[^\n]+\n)*?Architecture: (\S+)", status, re.M)
    pythons = sorted(p.name[len("python"):] for p in (rootfs / "usr/lib").glob("python3.*")
                     if re.fullmatch(r"python3\.\d+", p.name))
    if glibc is None or arch is None or not pythons:
        raise RunError(f"{rootfs}: no libc6 or python3 found; debootstrap did not install them")
    machine = {v: k for k, v in _DEB_ARCH.items()}.get(arch.group(1), arch.group(1))
    return {"python": pythons[-1], "glibc": f"{glibc.group(1)}.{glibc.group(2)}",
            "arch": machine}


def build_project(client: Any, base: str, tag: str, say: Progress, *,
                  cache_dir: Path | None = None, root: Path = PROJECT_ROOT) -> None:
    """Make the wheels on this machine, then build ``tag`` FROM ``base`` with no network."""
    labels = client.images.get(base).labels or {}
    python, glibc, arch = (labels.get(f"orbitmesh.{k}") for k in ("python", "glibc", "arch"))
    if not (python and glibc and arch):
        raise RunError(f"{base} lacks its python/glibc labels; rebuild it with --force")
    with tempfile.TemporaryDirectory(prefix="orbitmesh-image-") as tmp:
        context = Path(tmp)
        wheels = context / "wheels"
        wheels.mkdir()
        project_wheel = build_wheel(root, wheels, say)
        download_dependencies(project_wheel, wheels, python=python, glibc=glibc, arch=arch,
                              say=say, cache_dir=cache_dir)
        (context / "Dockerfile").write_text(offline_dockerfile(base))
        say(f"docker build {tag} (no network; {len(list(wheels.iterdir()))} wheels)")
        _docker_build(client, context, tag, {IMAGE_LABEL: "project",
                                             "orbitmesh.base": base}, say)


def build_wheel(root: Path, out: Path, say: Progress) -> Path:
    """``pip wheel`` of exactly the hashed source files (copied aside, so no build/ is left)."""
    with tempfile.TemporaryDirectory(prefix="orbitmesh-src-") as tmp:
        for rel in source_files(root):
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, Path(tmp) / rel)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
              "-q", "-w", str(out), tmp], say, "pip wheel")
    found = sorted(out.glob("orbitmesh-*.whl"))
    if not found:
        raise RunError(f"pip wheel made no orbitmesh wheel in {out}")
    return found[-1]


def download_dependencies(project_wheel: Path, out: Path, *, python: str, glibc: str,
                          arch: str, say: Progress, cache_dir: Path | None = None) -> None:
    """``pip download`` the wheel's dependencies (and the docker extra) for the image's Python."""
    major, minor = python.split(".")
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
               "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
               "--abi", f"cp{major}{minor}", *manylinux_platforms(glibc, arch), "-d", str(out),
               f"{project_wheel}[docker]"]
    if cache_dir is not None:
        command[4:4] = ["--cache-dir", str(cache_dir)]
    say(f"pip download dependencies for cp{major}{minor} manylinux_{glibc} {arch}")
    _run(command, say, "pip download")


def manylinux_platforms(glibc: str, arch: str) -> list[str]:
    """``--platform`` options for every manylinux tag a glibc runs (pip does not expand them)."""
    glibc_major, glibc_minor = (int(x) for x in glibc.split("."))
    tags = [f"manylinux_{glibc_major}_{m}_{arch}" for m in range(glibc_minor, 4, -1)]
    tags += [f"manylinux{legacy}_{arch}" for legacy in ("2014", "2010", "1")]
    return [word for tag in tags for word in ("--platform", tag)]


def _docker_build(client: Any, context: Path, tag: str, labels: dict[str, str],
                  say: Progress) -> None:
    from docker.errors import APIError

    try:
        for chunk in client.api.build(path=str(context), tag=tag, rm=True, forcerm=True,
                                      network_mode="none", labels=labels, decode=True):
            if "error" in chunk:
                raise RunError(f"docker build of {tag} failed: {chunk['error'].strip()}")
            line = str(chunk.get("stream", "")).strip()
            if line.startswith("Step "):
                say(line)
    except APIError as exc:
        raise RunError(f"docker build of {tag} failed: {exc}") from exc


def _run(command: list[str], say: Progress, what: str) -> None:
    """Run a build step; on failure raise with the tail of its output."""
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RunError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    say(f"{what}: done in {time.monotonic() - started:.1f} s")


def dump(result: BuildResult) -> str:
    """A BuildResult as JSON text."""
    return json.dumps(result.__dict__, indent=2)
