# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The maintenance-window filters: apt_security_sources (the security archive of the apt sources
alone) and apt_plan (the packages of apt-get --simulate)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.opskit.runbook.plugins.filter.maintenance import FilterModule, apt_plan, apt_security_sources


def target(uri, release, origin, label, suite, entry, component="main", codename=None, target_of="deb"):
    return ("MetaKey: %s/binary-amd64/Packages\nShortDesc: Packages\nCodename: %s\nLabel: %s\nOrigin: %s\nSuite: %s\n"
            "Trusted: yes\nComponent: %s\nCreated-By: Packages\nRelease: %s\nRepo-URI: %s\nSite: %s\nSourcesentry: %s\n"
            "Target-Of: %s\n\n" % (component, codename or release, label, origin, suite, component, release, uri,
                                   uri.rstrip("/"), entry, target_of))


DEBIAN_SOURCES = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
Architectures: amd64
"""
DEBIAN = (target("http://deb.debian.org/debian/", "bookworm", "Debian", "Debian", "oldstable",
                 "/etc/apt/sources.list.d/debian.sources:1")
          + target("http://deb.debian.org/debian/", "bookworm-updates", "Debian", "Debian", "oldstable-updates",
                   "/etc/apt/sources.list.d/debian.sources:1")
          + target("http://deb.debian.org/debian-security/", "bookworm-security", "Debian", "Debian-Security",
                   "oldstable-security", "/etc/apt/sources.list.d/debian.sources:2")
          + target("http://deb.debian.org/debian-security/", "bookworm-security", "Debian", "Debian-Security",
                   "oldstable-security", "/etc/apt/sources.list.d/debian.sources:2", component="contrib")
          + target("http://deb.debian.org/debian-security/", "bookworm-security", "Debian", "Debian-Security",
                   "oldstable-security", "/etc/apt/sources.list.d/debian.sources:2", target_of="deb-src"))


def test_debian_keeps_only_the_security_stanza_with_its_options():
    out = apt_security_sources(DEBIAN, {"/etc/apt/sources.list.d/debian.sources": DEBIAN_SOURCES})
    assert out == ("Types: deb\nURIs: http://deb.debian.org/debian-security/\nSuites: bookworm-security\n"
                   "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
                   "Architectures: amd64\n")


def test_ubuntu_one_line_sources_keep_their_bracket_options():
    listing = ("# ubuntu\ndeb [arch=amd64,i386 signed-by=/usr/share/keyrings/ubuntu-archive-keyring.gpg] http://archive.ubuntu.com/ubuntu noble main\n"
               "deb [signed-by=/usr/share/keyrings/ubuntu-archive-keyring.gpg] http://security.ubuntu.com/ubuntu noble-security main universe\n")
    targets = (target("http://archive.ubuntu.com/ubuntu/", "noble", "Ubuntu", "Ubuntu", "noble", "/etc/apt/sources.list:2")
               + target("http://security.ubuntu.com/ubuntu/", "noble-security", "Ubuntu", "Ubuntu", "noble-security",
                        "/etc/apt/sources.list:3")
               + target("http://security.ubuntu.com/ubuntu/", "noble-security", "Ubuntu", "Ubuntu", "noble-security",
                        "/etc/apt/sources.list:3", component="universe"))
    out = apt_security_sources(targets, {"/etc/apt/sources.list": listing})
    assert out == ("Types: deb\nURIs: http://security.ubuntu.com/ubuntu/\nSuites: noble-security\nComponents: main universe\n"
                   "Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n")


def test_a_third_party_archive_calling_itself_security_does_not_match_the_default_patterns():
    fake = target("http://example.org/repo/", "bookworm-security", "Example", "Example", "bookworm-security", "/x.list:1")
    assert apt_security_sources(fake) == ""
    assert "URIs: http://example.org/repo/" in apt_security_sources(fake, patterns=["o=Example,a=*-security"])


def test_flat_archive_without_components_and_without_the_source_file():
    flat = target("file:/srv/sec/", "./", "Debian", "Debian-Security", "bookworm-security", "/gone.list:1", component="")
    assert apt_security_sources(flat, {}) == "Types: deb\nURIs: file:/srv/sec/\nSuites: ./\n"


@pytest.mark.parametrize("indextargets, patterns, message", [
    (None, None, "expected the output of apt-get indextargets"),
    ("", [], "non-empty list of origin patterns"),
    ("", ["origin"], "is not one of"),
    ("", ["colour=blue"], "is not one of"),
    ("", [""], "must be text"),
])
def test_bad_arguments_are_refused(indextargets, patterns, message):
    with pytest.raises(AnsibleFilterError, match=message):
        apt_security_sources(indextargets, patterns=patterns)


def test_apt_plan_reads_the_inst_lines():
    output = ("Reading package lists...\nThe following packages will be upgraded:\n  libssl3 openssl\n"
              "Inst libssl3 [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/oldstable-security [amd64])\n"
              "Inst linux-image-6.1.0-30-amd64 (6.1.124-1 Debian-Security:12/oldstable-security [amd64])\n"
              "Conf libssl3 (3.0.16-1~deb12u1 Debian-Security:12/oldstable-security [amd64])\n")
    assert apt_plan(output) == [
        {"name": "libssl3", "from": "3.0.15-1~deb12u1", "to": "3.0.16-1~deb12u1", "origin": "Debian-Security:12/oldstable-security"},
        {"name": "linux-image-6.1.0-30-amd64", "from": None, "to": "6.1.124-1", "origin": "Debian-Security:12/oldstable-security"}]
    assert apt_plan("0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n") == []
    with pytest.raises(AnsibleFilterError):
        apt_plan(None)


def test_filter_module_names():
    assert set(FilterModule().filters()) == {"apt_security_sources", "apt_plan"}
