# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Zip the collection's module_utils for opskit-wal (run on the controller by tasks/pitr_archive.yml).

    opskit_wal_lib.py <collection>/plugins/module_utils <dest.zip>

One file to copy instead of a tree of ~90; the same input gives the same bytes (sorted entries,
fixed times), so an unchanged collection is an unchanged copy on the managed host.
"""

import os
import sys
import zipfile

BASE = "ansible_collections/opskit/runbook/plugins/module_utils"
STAMP = (1980, 1, 1, 0, 0, 0)


def _add(zf, name, data):
    info = zipfile.ZipInfo(name, STAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def build(src, dest):
    with zipfile.ZipFile(dest, "w") as zf:
        for package in ("ansible_collections", "ansible_collections/opskit", "ansible_collections/opskit/runbook",
                        "ansible_collections/opskit/runbook/plugins"):
            _add(zf, package + "/__init__.py", b"")
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(root, name)
                with open(path, "rb") as fh:
                    _add(zf, "%s/%s" % (BASE, os.path.relpath(path, src).replace(os.sep, "/")), fh.read())


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2])
