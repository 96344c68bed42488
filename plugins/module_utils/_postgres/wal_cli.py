# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""opskit-wal: the archive_command and restore_command of a physical series.

    python3 opskit-wal --config /etc/opskit/wal.json push %p %f      (archive_command)
    python3 opskit-wal --config /etc/opskit/wal.json fetch %f %p     (restore_command)
    python3 opskit-wal --config /etc/opskit/wal.json receive         (pg_receivewal, see receivewal.py)

The config file (JSON, mode 0600, owned by the server's user) holds the location, the series
and the storage options with their credentials, so that no secret is ever on a command line or
in postgresql.conf. Exit codes are what PostgreSQL understands: 0 done; 1 a push to retry, or a
file that is not archived (the end of the archive); 126 a fetched file that is corrupt, which
makes PostgreSQL abort the recovery instead of ending it early and promoting at that point.
"""

from __future__ import annotations

import json
import os
import stat
import sys

from .._errors import IntegrityError, NotFoundError, OpsError
from .._storage.options import PROTECTION_ARGSPEC, STORAGE_OPTION_NAMES, open_location
from .wal import fetch, push

USAGE = "usage: opskit-wal --config FILE push PATH NAME | fetch NAME PATH | receive"
EXIT_RETRY, EXIT_ABORT = 1, 126


def load_config(path):
    """The helper's config; OpsError when it is missing, readable by others, or incomplete."""
    try:
        st = os.stat(path)
        with open(path) as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise OpsError("config %s cannot be read: %s" % (path, getattr(exc, "strerror", None) or exc)) from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise OpsError("config %s is readable by other users (mode %04o): it holds credentials, make it 0600"
                       % (path, stat.S_IMODE(st.st_mode)))
    for field in ("location", "series"):
        if not isinstance(config.get(field), str) or not config[field]:
            raise OpsError("config %s: %s is missing" % (path, field))
    return config


def location_of(config):
    location = open_location(config["location"], **{k: config.get(k) for k in STORAGE_OPTION_NAMES})
    location.protection_options = {k: config.get(k) for k in PROTECTION_ARGSPEC}
    return location


def run(argv, err=sys.stderr):
    """Run one command; return the exit code, with one line on ``err`` when it is not 0."""
    if len(argv) == 3 and argv[0] == "--config" and argv[2] == "receive":
        argv = argv + ["-", "-"]
    if len(argv) != 5 or argv[0] != "--config" or argv[2] not in ("push", "fetch", "receive"):
        err.write(USAGE + "\n")
        return EXIT_RETRY
    command, first, second = argv[2], argv[3], argv[4]
    try:
        config = load_config(argv[1])
        location = location_of(config)
        if command == "receive":
            from .receivewal import receive  # only here: a fetch in restore_command imports less
            return receive(config, location, err)
        if command == "push":
            notes = []
            push(location, config["series"], first, second, config.get("compression") or "zstd",
                 config.get("compression_level"), notes)
            err.write("".join("opskit-wal: note: %s\n" % note for note in notes))
        else:
            fetch(location, config["series"], first, second)
    except NotFoundError as exc:
        if command == "fetch":
            return EXIT_RETRY  # not archived: PostgreSQL tries its next source; no message
        err.write("opskit-wal: %s\n" % exc.msg)
        return EXIT_RETRY
    except IntegrityError as exc:
        err.write("opskit-wal: %s\n" % exc.msg)
        return EXIT_ABORT if command == "fetch" else EXIT_RETRY
    except OpsError as exc:
        err.write("opskit-wal: %s\n" % exc.msg)
        return EXIT_RETRY
    except OSError as exc:
        err.write("opskit-wal: %s %s: %s\n" % (command, first, exc.strerror or exc))
        return EXIT_RETRY
    return 0
