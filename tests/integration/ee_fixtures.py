# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A base image for ansible-builder without a registry: a Debian root filesystem assembled
from the packages installed on this (Debian) machine, with Python 3, pip, apt and dpkg, and
``docker import``-ed. No registry is reachable here, so no base image can be pulled; the
image build itself needs PyPI and deb.debian.org, as every EE build does.

ansible-builder's scripts call a dnf-like package manager (``install -y PKGS``, ``clean
all``): /usr/local/bin/pkgmgr maps that onto apt-get, and the EE definition names it in
``options.package_manager_path``; Debian's Python has ensurepip disabled, so
``options.skip_pip_install`` (python3-pip is in the image)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile

# The roots of the image; their installed dependencies are added (about 110 packages, 160 MiB).
ROOTS = ("base-files", "base-passwd", "bash", "coreutils", "dash", "debianutils", "diffutils", "findutils",
         "grep", "gzip", "sed", "tar", "mawk", "libc-bin", "hostname", "login", "passwd", "util-linux", "dpkg",
         "apt", "ca-certificates", "debian-archive-keyring", "python3", "python3-pip", "ncurses-base", "perl-base")

PKGMGR = """#!/bin/sh
# dnf-like front end of apt-get for ansible-builder's scripts: "install -y PKGS...", "clean all"
set -e
case "$1" in
  install) shift; [ "$1" = -y ] && shift
           apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" ;;
  clean) apt-get clean; rm -rf /var/lib/apt/lists/* ;;
  *) echo "pkgmgr: unsupported: $*" >&2; exit 1 ;;
esac
"""


def _query(fmt, *packages):
    return subprocess.run(["dpkg-query", "-W", "-f=" + fmt] + list(packages), capture_output=True, text=True,
                          check=False).stdout


def installed_closure(roots=ROOTS):
    """The roots and their (pre-)dependencies, as installed here (the first installed alternative)."""
    installed = set(re.findall(r"^install ok installed (\S+)$", _query("${Status} ${Package}\n"), re.M))
    seen, todo = set(), [r for r in roots if r in installed]
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.add(package)
        for alternatives in _query("${Pre-Depends}, ${Depends}", package).split(","):
            names = [re.sub(r"[ (:].*", "", a.strip()) for a in alternatives.split("|") if a.strip()]
            todo.extend([n for n in names if n in installed][:1])
    return sorted(seen)


def _copy_package_files(rootfs, packages):
    for package in packages:
        for path in subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                                   check=False).stdout.splitlines():
            real = os.path.realpath(os.path.dirname(path))
            target = rootfs + os.path.join(real, os.path.basename(path))
            if os.path.isdir(path) and not os.path.islink(path):
                os.makedirs(target, exist_ok=True)
            elif os.path.lexists(path) and not os.path.lexists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.islink(path):
                    os.symlink(os.readlink(path), target)
                else:
                    shutil.copy2(path, target)


def assemble_rootfs(rootfs, packages):
    """Copy the packages' files (usr-merged), their dpkg records, and the apt, user, CA and pip
    configuration into rootfs."""
    _copy_package_files(rootfs, packages)
    for top in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink("/" + top) and not os.path.lexists(os.path.join(rootfs, top)):
            os.makedirs(os.path.join(rootfs, "usr", top), exist_ok=True)
            os.symlink("usr/" + top, os.path.join(rootfs, top))
    for sub in ("tmp", "var/tmp", "root", "run", "proc", "sys", "dev", "var/lib/dpkg/info", "var/lib/dpkg/updates",
                "var/cache/apt/archives/partial", "var/lib/apt/lists/partial", "var/log", "usr/local/bin"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    os.chmod(os.path.join(rootfs, "var/tmp"), 0o1777)
    with open(os.path.join(rootfs, "var/lib/dpkg/status"), "w") as status:
        for package in packages:
            status.write(subprocess.run(["dpkg-query", "-s", package], capture_output=True, text=True,
                                        check=False).stdout.rstrip("\n") + "\n\n")
            with open(os.path.join(rootfs, "var/lib/dpkg/info/%s.list" % package), "w") as fh:
                fh.write(subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False).stdout)
    open(os.path.join(rootfs, "var/lib/dpkg/available"), "w").close()
    shutil.copytree("/etc/apt/sources.list.d", os.path.join(rootfs, "etc/apt/sources.list.d"), dirs_exist_ok=True)
    with open("/usr/share/base-passwd/passwd.master") as src, open(os.path.join(rootfs, "etc/passwd"), "w") as fh:
        fh.write(src.read() + "_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n")
    shutil.copy("/usr/share/base-passwd/group.master", os.path.join(rootfs, "etc/group"))
    # the machine's CA bundle: pip and apt behind a TLS-inspecting proxy
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", os.path.join(rootfs, "etc/ssl/certs/ca-certificates.crt"))
    with open(os.path.join(rootfs, "etc/pip.conf"), "w") as fh:
        fh.write("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    with open(os.path.join(rootfs, "usr/local/bin/pkgmgr"), "w") as fh:
        fh.write(PKGMGR)
    os.chmod(os.path.join(rootfs, "usr/local/bin/pkgmgr"), 0o755)


def import_image(rootfs, tag):
    """docker import of rootfs as tag (numeric owners, root-owned)."""
    archive = rootfs + ".tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".", filter=_root_owned)
    proc = subprocess.run(["docker", "import", "--change", 'CMD ["bash"]', archive, tag], capture_output=True,
                          text=True, check=False)
    os.unlink(archive)
    assert proc.returncode == 0, proc.stderr


def _root_owned(info):
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info
