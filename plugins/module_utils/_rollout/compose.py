# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout's Compose project files: after a Compose rollout the project records what runs.

The containers of a Compose service carry where their project lives (labels
``com.docker.compose.project.working_dir``, ``.config_files`` and, from Compose 2.20,
``.environment_file``). ``find_image`` reads the service's ``image:`` from those files without
a YAML library (line by line: the top-level ``services:``, the service's key, its ``image:``),
and ``plan_edit`` decides, as a pure function, which one line changes so that the next
``docker compose up -d`` keeps the image the rollout put in place:

- ``image: repo:1.0`` (the image that ran)           -> that line, ``image: repo:1.1``;
- ``image: ${WEB_IMAGE}`` / ``${WEB_IMAGE:-repo:1.0}`` -> ``WEB_IMAGE=repo:1.1`` in the env file
  (added when the variable is only defaulted);
- the file already names the new image               -> nothing to do;
- the file names a third image                        -> refused before anything changes.

``apply_edit`` writes the file through a temporary file and a rename (mode kept). A project
whose files cannot be found here (no labels, files on another host, no ``image:``) raises
``NotHere``: the caller warns and goes on, since nothing here contradicts the rollout.
"""

from __future__ import annotations

import os
import re
import tempfile

from .._errors import ConfigError, ServiceError

WORKING_DIR = "com.docker.compose.project.working_dir"
CONFIG_FILES = "com.docker.compose.project.config_files"
ENV_FILE = "com.docker.compose.project.environment_file"


class NotHere(ConfigError):
    """The compose project's files are not found on this host, or do not name an image."""


_KEY = re.compile(r"^(?P<indent>\s*)(?P<q>['\"]?)(?P<key>[^'\":#\s][^'\":#]*?)(?P=q)\s*:(?P<rest>.*)$")
_VAR = re.compile(r"^\$(?:\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))$")


def sources(labels):
    """(working_dir, [config files], env file) of a compose container's labels; files absolute."""
    workdir = labels.get(WORKING_DIR) or ""
    files = [f.strip() for f in (labels.get(CONFIG_FILES) or "").split(",") if f.strip()]
    files = [f if os.path.isabs(f) else os.path.join(workdir, f) for f in files]
    env = labels.get(ENV_FILE) or (os.path.join(workdir, ".env") if workdir else "")
    return workdir, files, env


def _scalar(rest):
    """The scalar value of ``key: value  # comment`` (quotes removed), and its quote char."""
    text = rest.strip()
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        return (text[1:end] if end > 0 else text[1:]), text[0]
    return text.split(" #", 1)[0].strip(), ""


def _blocks(lines, start, indent):
    """Indexes of the keys directly under the block that starts after ``start`` at ``indent``."""
    child = None
    for index in range(start + 1, len(lines)):
        line = lines[index]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        width = len(line) - len(line.lstrip())
        if width <= indent:
            return
        if child is None:
            child = width
        if width == child:
            yield index


def find_image(text, service):
    """(line index, image value, quote char) of the ``image:`` of ``service``, or None."""
    lines = text.splitlines()
    top = next((i for i, line in enumerate(lines) if re.match(r"^services\s*:\s*(#.*)?$", line)), None)
    if top is None:
        return None
    for index in _blocks(lines, top, 0):
        m = _KEY.match(lines[index])
        if not m or m.group("key") != service:
            continue
        for sub in _blocks(lines, index, len(m.group("indent"))):
            k = _KEY.match(lines[sub])
            if k and k.group("key") == "image":
                value, quote = _scalar(k.group("rest"))
                return sub, value, quote
        return None
    return None


def _env_value(env_text, name):
    for line in (env_text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if value[:1] in ("'", '"') and value[-1:] == value[:1] and len(value) > 1:
                value = value[1:-1]
            return value
    return None


def plan_edit(path, text, service, running, new, env_path=None, env_text=None):
    """What to change so that the compose project says ``new`` where it now says ``running``.

    Returns None (nothing to do) or {"path", "line" (index or None to append), "text" (the new
    line), "was"}. ConfigError when the file names another image than ``running`` and ``new``.
    """
    found = find_image(text, service)
    if found is None:
        raise NotHere("compose file %s: no image: for service %s (a built image)" % (path, service))
    index, value, quote = found
    var = _VAR.match(value)
    if var is None:
        if value == new:
            return None
        if value != running:
            raise ConfigError("compose file %s pins image %s for service %s, but %s runs: refusing to roll out %s "
                              "(the next docker compose up -d would bring back %s); fix the file or set "
                              "compose_file=ignore" % (path, value, service, running, new, value))
        line = text.splitlines()[index]
        cut = line.index(":", line.index("image")) + 1
        rest = line[cut:].replace("%s%s%s" % (quote, value, quote), "%s%s%s" % (quote, new, quote), 1)
        return {"path": path, "line": index, "text": line[:cut] + rest, "was": value}
    return _plan_env(path, service, var, running, new, env_path, env_text)


def _plan_env(path, service, var, running, new, env_path, env_text):
    name = var.group("name") or var.group("bare")
    current = _env_value(env_text, name)
    effective = current if current not in (None, "") or var.group("op") == "-" else var.group("default")
    if current is None and var.group("op") is None and not var.group("default"):
        effective = None
    if effective == new:
        return None
    if effective is not None and effective != running:
        raise ConfigError("compose file %s sets the image of service %s from %s, which gives %s, but %s runs: "
                          "refusing to roll out %s; fix %s or set compose_file=ignore"
                          % (path, service, name, effective, running, new, env_path))
    if not env_path:
        raise ConfigError("compose file %s takes the image of service %s from %s, and the project has no env "
                          "file to record %s in; set compose_file=ignore" % (path, service, name, new))
    lines = (env_text or "").splitlines()
    index = next((i for i, line in enumerate(lines) if line.partition("=")[0].strip() == name), None)
    return {"path": env_path, "line": index, "text": "%s=%s" % (name, new), "was": effective}


def read_text(path, missing_ok=False):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise NotHere("compose file %s does not exist on this host" % path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("compose file %s cannot be read: %s" % (path, exc)) from exc


def apply_edit(edit):
    """Write ``edit`` (plan_edit's) in place: a temporary file beside it, then a rename."""
    path = edit["path"]
    text = read_text(path, missing_ok=True) or ""
    lines = text.splitlines()
    if edit["line"] is None:
        lines.append(edit["text"])
    else:
        lines[edit["line"]] = edit["text"]
    mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o644
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".opskit-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ServiceError("cannot write %s: %s" % (path, exc)) from exc


def plan_project(labels, service, running, new):
    """The edit for the compose project of a container's ``labels`` (None: nothing to do).

    The last config file that sets the service's image wins (override files), as in Compose.
    """
    _workdir, files, env_path = sources(labels)
    if not files:
        raise NotHere("compose service %s: its containers carry no %s label" % (service, CONFIG_FILES))
    chosen = None
    for path in files:
        text = read_text(path)
        if find_image(text, service) is not None:
            chosen = (path, text)
    if chosen is None:
        raise NotHere("compose files %s: no image: for service %s (a built image)" % (", ".join(files), service))
    env_text = read_text(env_path, missing_ok=True) if env_path else None
    return plan_edit(chosen[0], chosen[1], service, running, new, env_path, env_text)
