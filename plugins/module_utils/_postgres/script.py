# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SQL scripts from a backup (plain dumps, globals) fed to psql so that no meta-command runs.

A backslash in a script is a psql meta-command: ``\\!`` runs a shell command as the module's
user, ``\\o`` writes files, ``\\copy`` reads them. A script from a bucket is not trusted:

- where psql has ``\\restrict`` (17.6+, 16.10+, 15.14+, 14.19+, 13.22+, 18+), the script is
  fed behind ``\\restrict <random key>``: psql itself refuses every meta-command after it
  (``restricted``). The dump's own ``\\restrict`` / ``\\unrestrict`` lines (pg_dump 15.14+ writes
  them) are dropped, so they neither fail nor lift the restriction;
- with an older psql, ``check_script`` reads the whole script first and refuses it (before
  anything is changed) when a backslash or a psql variable could reach psql's lexer outside of
  string literals, comments and COPY data (``safe_reader`` then feeds it).
"""

from __future__ import annotations

import re
import secrets

from .._errors import IntegrityError

RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}
_KEY_LINE = re.compile(rb"\\(?:un)?restrict ([A-Za-z0-9]{1,128})(?:\r?\n|\Z)")
CHUNK = 1024 * 1024
_STATEMENT_KEEP = 1024 * 1024


RESTRICTED = "backslash commands are restricted"  # what psql says when \\restrict refuses one


def refused_by_psql(what):
    """The error for a script in which psql's ``\\restrict`` refused a meta-command."""
    return IntegrityError("%s is refused: it contains a psql meta-command, which psql's \\restrict"
                          " stopped (the backup is not a pg_dump output; restore it from another backup)" % what)


def has_restrict(version):
    """Whether psql ``version`` ('15.18', '18.1', '12.22') knows ``\\restrict``."""
    match = re.match(r"(\d+)(?:\.(\d+))?", str(version or ""))
    if not match:
        return False
    major, minor = int(match.group(1)), int(match.group(2) or 0)
    if major >= 18:
        return True
    return major in RESTRICT_SINCE and minor >= RESTRICT_SINCE[major]


class SafeScript:
    """File-like: the script read from ``reader`` with the dump's own key lines dropped, behind
    our ``\\restrict <random key>`` when ``restrict`` is set."""

    def __init__(self, reader, restrict):
        self.reader, self.key, self.eof = reader, None, False
        self.pending = (b"\\restrict %s\n" % secrets.token_hex(16).encode()) if restrict else b""
        self.carry = b"\n"  # marks the start of the script as the start of a line

    def _drop_key_lines(self, data):
        out, pos = [], 0
        while True:
            index = data.find(b"\n\\", pos)
            if index < 0:
                out.append(data[pos:])
                return b"".join(out)
            match = _KEY_LINE.match(data, index + 1)
            if match and self.key is None and data.startswith(b"\\restrict ", index + 1):
                self.key = match.group(1)
            if match and match.group(1) == self.key:
                out.append(data[pos:index + 1])
                pos = match.start() + len(match.group().rstrip(b"\r\n"))
                continue
            out.append(data[pos:index + 2])
            pos = index + 2

    def read(self, size=-1):
        want = max(size, 1) if size is not None and size >= 0 else None
        while not self.eof and (want is None or len(self.pending) < want):
            chunk = self.reader.read(CHUNK)
            self.eof = not chunk
            text, self.carry = self.carry + chunk, b""
            cut = text.rfind(b"\n")
            if not self.eof and cut >= 0 and len(text) - cut < 200 and text[cut + 1:cut + 2] in (b"", b"\\"):
                text, self.carry = text[:cut], text[cut:]  # maybe a key line, not complete yet
            self.pending += self._drop_key_lines(text)
        if want is None:
            want = len(self.pending)
        out, self.pending = self.pending[:want], self.pending[want:]
        return out


# ---------------------------------------------------------------- the fallback check

_TOP = re.compile(rb"""['"$\\;:]|--|/\*""")
_DOLLAR = re.compile(rb"\$([A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
_IDENT = re.compile(rb"[A-Za-z0-9_$\x80-\xff]")
_COPY = re.compile(rb"\s*COPY\s+[A-Za-z0-9_.\"\x80-\xff]+\s*(\([^()]*\)\s*)?FROM\s+STDIN\s*$", re.I)
_COPY_END = re.compile(rb"^\\\.\r?$", re.M)
_COMMENT = re.compile(rb"/\*|\*/")
_VARIABLE = re.compile(rb"[A-Za-z0-9_\x80-\xff]+")
_PSQL_VARIABLE = re.compile(rb"[A-Z0-9_]*[A-Z][A-Z0-9_]*")
_LINE_REST = re.compile(rb"[ \t\r]*(\n|$)")


class _Refused(Exception):
    def __init__(self, line, what):
        super().__init__(what)
        self.line, self.what = line, what


class _Lexer:
    """Just enough of psql's lexer to know where a backslash would be a meta-command."""

    def __init__(self, data, copy_allowed):
        self.data, self.copy_allowed = data, copy_allowed
        self.pos, self.statement, self.kept, self.key = 0, [], 0, None

    def refuse(self, at, what):
        raise _Refused(self.data[:at].count(b"\n") + 1, what)

    def keep(self, piece):
        """The statement's text outside quotes and comments (its first MiB: enough for a COPY)."""
        if self.kept < _STATEMENT_KEEP:
            self.statement.append(piece)
        self.kept += len(piece)

    def run(self):
        data = self.data
        while True:
            match = _TOP.search(data, self.pos)
            if not match:
                return
            self.keep(data[self.pos:match.start()])
            self.pos = match.end()
            token = match.group()
            handler = _HANDLERS.get(token[:1] if token not in (b"--", b"/*") else token)
            handler(self, match.start())

    def _string_end(self, start, escapes):
        """Index after the closing quote of the string literal opening at ``start``, or -1."""
        data, pos = self.data, start + 1
        while True:
            end = data.find(b"'", pos)
            back = data.find(b"\\", pos, end) if escapes and end >= 0 else -1
            if back >= 0:
                pos = back + 2
            elif end < 0:
                return -1
            elif data[end + 1:end + 2] == b"'":
                pos = end + 2
            else:
                return end + 1

    def single(self, start):
        """A string literal. In an E'' string a backslash escapes; in a standard one it does only
        when standard_conforming_strings is off, which the script can set: such a literal must
        end at the same place read either way (``'\\x6c'`` does, ``'C:\\'`` does not)."""
        estring = start > 0 and self.data[start - 1:start] in (b"e", b"E") and not (
            start > 1 and _IDENT.match(self.data, start - 2))
        end = self._string_end(start, True)
        if not estring and self._string_end(start, False) != end:
            self.refuse(start, "a string literal that psql would read differently with standard_conforming_strings off")
        if end < 0:
            self.refuse(start, "an unterminated quote")
        self.pos = end
        self.keep(b"''")

    def double(self, start):
        end = self.data.find(b'"', start + 1)
        while end >= 0 and self.data[end + 1:end + 2] == b'"':
            end = self.data.find(b'"', end + 2)
        if end < 0:
            self.refuse(start, "an unterminated quoted identifier")
        self.pos = end + 1
        self.keep(b'"q"')

    def dollar(self, start):
        match = _DOLLAR.match(self.data, start)
        if not match or (start > 0 and _IDENT.match(self.data, start - 1)):
            self.keep(b"$")
            return  # a parameter or part of an identifier: lexed on as top level
        end = self.data.find(match.group(), match.end())
        if end < 0:
            self.refuse(start, "an unterminated dollar quote")
        self.pos = end + len(match.group())
        self.keep(b"''")

    def line_comment(self, start):
        end = self.data.find(b"\n", start)
        self.pos = len(self.data) if end < 0 else end

    def block_comment(self, start):
        depth, pos = 1, start + 2
        while depth:
            match = _COMMENT.search(self.data, pos)
            if not match:
                self.refuse(start, "an unterminated comment")
            depth += 1 if match.group() == b"/*" else -1
            pos = match.end()
        self.pos = pos
        self.keep(b" /**/ ")

    def backslash(self, start):
        line_start = start == 0 or self.data[start - 1:start] == b"\n"
        match = _KEY_LINE.match(self.data, start) if line_start else None
        if match and self.key is None and self.data[start:start + 10] == b"\\restrict ":
            self.key = match.group(1)
        if match and match.group(1) == self.key:
            self.pos = match.end()
            return  # pg_dump's own \restrict / \unrestrict: dropped by SafeScript
        self.refuse(start, "a psql meta-command")

    def colon(self, start):
        """``:NAME``, ``:'NAME'``, ``:"NAME"``, ``:{?NAME}`` interpolate a psql variable, whose value
        psql lexes again (LAST_ERROR_MESSAGE is text of the server's). Only psql's own variables
        can exist here (all upper case), so ``[1:n]`` or ``[1:2]`` is no variable."""
        following = self.data[start + 1:start + 2]
        name = _VARIABLE.match(self.data, start + 1)
        if following == b":":
            self.pos = start + 2
        elif following and following in b"'\"{" or (name and _PSQL_VARIABLE.fullmatch(name.group())):
            self.refuse(start, "a psql variable")
        self.keep(b":")

    def semicolon(self, start):
        text = b"".join(self.statement) if self.kept < _STATEMENT_KEEP else b""
        self.statement, self.kept = [], 0
        if not _COPY.match(text):
            return
        rest = _LINE_REST.match(self.data, start + 1)
        if not self.copy_allowed or not rest or not rest.group(1):
            self.refuse(start, "a COPY FROM stdin where no COPY data can be")
        end = _COPY_END.search(self.data, rest.end())
        self.pos = len(self.data) if end is None else end.end()


_HANDLERS = {b"'": _Lexer.single, b'"': _Lexer.double, b"$": _Lexer.dollar, b"--": _Lexer.line_comment,
             b"/*": _Lexer.block_comment, b"\\": _Lexer.backslash, b":": _Lexer.colon,
             b";": _Lexer.semicolon}


def check_script(data, what, copy_allowed=True):
    """Refuse (IntegrityError, one line) a script psql would run a meta-command or a variable of."""
    try:
        _Lexer(data, copy_allowed).run()
    except _Refused as exc:
        raise IntegrityError("%s is refused: line %d has %s, and this psql has no \\restrict to keep it from"
                             " running (use psql 17.6+, 16.10+, 15.14+ or newer client tools, e.g. bin_dir)"
                             % (what, exc.line, exc.what)) from None
