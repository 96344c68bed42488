# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the role and playbook tests: a webhook receiver, report readers."""

from __future__ import annotations

import glob
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Background

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOKS = os.path.join(ROOT, "playbooks")


class Webhook(Background):
    """A local HTTP receiver for the length of a with-block: every POST body (parsed JSON) lands in ``posts``."""

    def __init__(self, status=200):
        self.posts = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts.append({"path": self.path, "headers": dict(self.headers),
                                    "json": json.loads(body or b"null")})
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/hooks/T000/B000/secret-token" % self.server.server_address[1]
        super().__init__(self.server.serve_forever)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def reports(report_dir, name):
    """The JSON reports named ``name`` in report_dir, oldest first, parsed."""
    paths = sorted(glob.glob(os.path.join(report_dir, "%s-*.json" % name)), key=os.path.getmtime)
    out = []
    for path in paths:
        with open(path) as fh:
            out.append(json.load(fh))
        assert os.path.exists(path[:-5] + ".html"), "no HTML report next to %s" % path
    return out


def playbook(name):
    return os.path.join(PLAYBOOKS, "%s.yml" % name)


def conn(pg):
    return {"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password, "bin_dir": pg.bin_dir}
