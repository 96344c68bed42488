# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""S3Location.replace_bytes on endpoints whose If-Match is unusable, as Ceph RGW 16 answers
(measured in tests/integration/test_radosgw.py): the quoted ETag is refused (412) while the
object is unchanged, and on a versioned bucket every If-Match is refused."""

from __future__ import annotations

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._storage.base import ChangedError

from test_engine_lock import _err, _s3

REFUSED = _err("PreconditionFailed", 412)
TOKEN = '"a"'


def _sent(fake):
    return [(name, kwargs.get("IfMatch")) for name, kwargs in fake.calls]


def test_a_quoted_etag_refused_while_unchanged_is_sent_unquoted():
    loc, fake = _s3(REFUSED, {"ETag": TOKEN}, {"ETag": '"b"'})
    assert loc.replace_bytes("s/k", b"x", TOKEN) == '"b"'
    assert _sent(fake) == [("put_object", TOKEN), ("head_object", None), ("put_object", "a")]
    assert loc.conditional_writes is True


def test_every_if_match_refused_while_unchanged_falls_back_like_no_conditional_writes():
    loc, fake = _s3(REFUSED, {"ETag": TOKEN}, REFUSED, {"ETag": TOKEN}, {"ETag": '"b"'})
    assert loc.replace_bytes("s/k", b"x", TOKEN) == '"b"'
    assert _sent(fake) == [("put_object", TOKEN), ("head_object", None), ("put_object", "a"),
                           ("head_object", None), ("put_object", None)]
    assert loc.conditional_writes is False


@pytest.mark.parametrize("answers", [
    ({"ETag": '"other"'},),                       # changed: refused at once
    ({"ETag": TOKEN}, REFUSED, {"ETag": '"other"'}),  # changed between the two attempts
    (_err("404", 404),),                          # deleted meanwhile
])
def test_a_changed_object_is_still_refused(answers):
    loc, fake = _s3(REFUSED, *answers)
    with pytest.raises(ChangedError):
        loc.replace_bytes("s/k", b"x", TOKEN)
    assert not fake.answers and loc.conditional_writes is True
