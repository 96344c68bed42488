# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""copy_to through ansible-playbook against moto: each new backup copied to a second bucket
(own credentials) and to a directory, the same sha256 at both locations, a failed copy that
leaves the primary published, each location rotated with its own policy, freshness per
location, Object Lock days=auto on a locked primary (the verification record locked too), and
a restore from the second location after the first bucket is deleted."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import secrets
import subprocess

import yaml

from ansible_collections.opskit.runbook.plugins.module_utils._engine.catalog import list_backups
from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.file import FileLocation

from alert_fixtures import RULES, annotations, promtool, samples
from roles_fixtures import conn as role_conn, playbook, reports
from test_pg_backup import conn, failed, name, ok, play, s3_args, task

AUTO_LOCK = {"mode": "GOVERNANCE", "days": "auto", "retention": {"keep_daily": 7, "keep_weekly": 4}}


def _objects(s3, bucket):
    """{key: sha256} of the backups stored in ``bucket`` (not markers nor locks)."""
    out = {}
    for obj in s3.client.list_objects_v2(Bucket=bucket).get("Contents", []):
        if "/." not in obj["Key"]:
            out[obj["Key"]] = hashlib.sha256(s3.client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()).hexdigest()
    return out


def _drop_bucket(s3, bucket):
    """Delete every version (bypassing governance retention), then the bucket: the disaster."""
    listing = s3.client.list_object_versions(Bucket=bucket)
    for version in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
        s3.client.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"],
                                BypassGovernanceRetention=True)
    s3.client.delete_bucket(Bucket=bucket)


def _ed25519(tmp_path):
    path = tmp_path / "signing"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.read_text(), (tmp_path / "signing.pub").read_text().strip()


def _until(s3, bucket, key):
    head = s3.client.head_object(Bucket=bucket, Key=key)
    return head.get("ObjectLockMode"), head["ObjectLockRetainUntilDate"].astimezone(datetime.timezone.utc)


def test_copy_to_second_location_rotate_report_and_restore_after_losing_the_first(pg, s3, run_playbook, tmp_path):
    src_db, restored_db = name("cp_src"), name("cp_restored")
    pg.createdb(src_db)
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, label text);"
            " INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 5000) g;", db=src_db)
    primary = "opskit-cp-%s" % secrets.token_hex(5)
    s3.client.create_bucket(Bucket=primary, ObjectLockEnabledForBucket=True)
    second, plain = s3.new_bucket(), s3.new_bucket()
    copy_secret = "copy-secret-%s" % secrets.token_hex(8)
    copy_to = {"location": "s3://%s/offsite" % second, "endpoint_url": s3.endpoint_url, "region": s3.region,
               "access_key": "copy-%s" % s3.access_key, "secret_key": copy_secret,
               "retention": {"keep_last": 1}}
    store = dict(s3_args(s3, primary), object_lock=AUTO_LOCK, copy_to=copy_to)
    plain_store = s3_args(s3, plain)
    missing = dict(copy_to, location="s3://opskit-no-such-bucket-%s/x" % secrets.token_hex(3))
    conf = tmp_path / "conf"
    conf.mkdir()
    # a second location that takes the preflight (writable) but cannot hold these series: a copy
    # that fails after the backup is published
    offsite = tmp_path / "broken"
    offsite.mkdir()
    for series in ("cp-fail", "cp-warn"):
        (offsite / series).write_text("not a directory\n")
    broken = {"location": "file://%s" % offsite}
    (conf / "app.ini").write_text("[db]\nhost = db1\n")
    res = run_playbook(play(
        task("dump", database=src_db, series="cp-db", **conn(pg), **store),
        task("dump again", database=src_db, series="cp-db", **conn(pg), **store),
        task("verify", state="verified", series="cp-db", **conn(pg), **store),
        {"name": "info", "opskit.runbook.backup_info": dict(store, max_age="1h"), "ignore_errors": True},
        {"name": "rotate", "opskit.runbook.s3_rotate": dict(store, keep_last=5), "ignore_errors": True},
        task("copy refused", database=src_db, series="cp-refused", **conn(pg), **dict(plain_store, copy_to=missing)),
        task("copy fails", database=src_db, series="cp-fail", **conn(pg), **dict(plain_store, copy_to=broken)),
        {"name": "copy warns", "ignore_errors": True, "opskit.runbook.volume_backup": dict(
            plain_store, state="backed_up", path=str(conf), series="cp-warn", copy_to=dict(broken, on_failure="warn"))},
        {"name": "info stale copy", "ignore_errors": True,
         "opskit.runbook.backup_info": dict(plain_store, series="cp-fail", max_age="1h", fail_on_stale=True,
                                            copy_to=broken)},
    ))
    assert copy_secret not in json.dumps(res.results) and copy_secret not in res.stdout
    first, again = ok(res.task("dump"))["backup"], ok(res.task("dump again"))["backup"]
    for backup in (first, again):
        assert [(c["location"], c["result"], c["objects"]) for c in backup["copies"]] == \
            [("s3://%s/offsite" % second, "copied", 2)]  # dump, manifest
    assert ok(res.task("verify"))["verification"]["result"] == "passed"

    # Object Lock days=auto: 7 days (keep_daily 7 is the finest rule), the verification record too
    manifest_key = "pg/cp-db/%s.manifest.json" % again["id"]  # the one verified (the latest)
    lock = json.loads(s3.client.get_object(Bucket=primary, Key=manifest_key)["Body"].read())["object_lock"]
    created = datetime.datetime.strptime(again["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert lock["days"] == 7 and lock["days_from"] == "retention"
    assert _until(s3, primary, manifest_key) == ("GOVERNANCE", created + datetime.timedelta(days=7))
    versions = list(s3.client.list_object_versions(Bucket=primary, Prefix=manifest_key)["Versions"])
    verified = [v for v in versions if b'"passed"' in s3.client.get_object(
        Bucket=primary, Key=manifest_key, VersionId=v["VersionId"])["Body"].read()]
    assert len(versions) == 2 and len(verified) == 1  # the record is a new version, locked as the first
    assert s3.client.head_object(Bucket=primary, Key=manifest_key, VersionId=verified[0]["VersionId"])[
        "ObjectLockMode"] == "GOVERNANCE"

    # freshness per location, then each location rotated with its own policy
    info = ok(res.task("info"))
    assert info["series"]["cp-db"]["count"] == 2 and not info["stale_series"]
    assert info["copy_to"]["location"] == "s3://%s/offsite" % second and info["copy_to"]["error"] is None
    assert info["copy_to"]["series"]["cp-db"]["newest"]["id"] == again["id"]
    assert info["backups"][0]["object_lock"]["mode"] == "GOVERNANCE"
    rotated = ok(res.task("rotate"))
    assert rotated["series"]["cp-db"]["counts"]["deleted"] == 0
    assert [b["id"] for b in rotated["copy_to"]["series"]["cp-db"]["deleted"]] == [first["id"]]
    assert rotated["copy_to"]["location"] == "s3://%s/offsite" % second

    # a copy location that is missing: refused before anything is written
    assert "bucket opskit-no-such-bucket-" in failed(res.task("copy refused"))
    # a failed copy: one line, the primary backup stays published; warn: the task succeeds
    msg = failed(res.task("copy fails"))
    assert "is published at s3://%s/pg, but its copy to file://%s failed: " % (plain, offsite) in msg
    warned = ok(res.task("copy warns"))
    assert warned["backup"]["copies"][0]["result"] == "failed"
    assert any("but its copy to file://%s failed" % offsite in w for w in warned.get("warnings", []))
    published = {k.split("/")[1] for k in _objects(s3, plain) if k.endswith(".manifest.json")}
    assert published == {"cp-fail", "cp-warn"}  # cp-refused: nothing written
    stale = res.task("info stale copy")
    assert "cp-fail (at file://%s)" % offsite in failed(stale)
    assert stale["series"]["cp-fail"]["count"] == 1 and stale["copy_to"]["series"]["cp-fail"]["count"] == 0
    assert stale["copy_to"]["stale_series"] == ["cp-fail"]
    assert sorted(p.name for p in offsite.iterdir()) == ["cp-fail", "cp-warn"]  # nothing left behind

    # both locations hold the same bytes of the newest backup (the manifest as published: the
    # primary's current version is the verification record)
    at_primary, at_second = _objects(s3, primary), _objects(s3, second)
    newest = {k.split("/", 1)[1]: v for k, v in at_primary.items() if again["id"] in k and "manifest" not in k}
    assert list(newest) == ["cp-db/" + again["url"].rsplit("/", 1)[1]]
    assert list(newest.values()) == [again["sha256"]]
    assert {k.split("/", 1)[1]: v for k, v in at_second.items() if "manifest" not in k} == newest  # older copy rotated
    published_version = [v for v in versions if v not in verified][0]["VersionId"]
    assert hashlib.sha256(s3.client.get_object(Bucket=primary, Key=manifest_key, VersionId=published_version)[
        "Body"].read()).hexdigest() == at_second["offsite/cp-db/%s.manifest.json" % again["id"]]

    # the disaster: the first bucket is gone; restore from the second location
    _drop_bucket(s3, primary)
    offsite = s3_args(s3, second, prefix="offsite")
    offsite.update(access_key=copy_to["access_key"], secret_key=copy_secret)
    res = run_playbook(play(task("restore from the copy", state="restored", series="cp-db", target_database=restored_db,
                                 create=True, **conn(pg), **offsite)))
    assert ok(res.task("restore from the copy"))["backup"]["id"] == again["id"]
    assert pg.psql("SELECT count(*), sum(id) FROM items", restored_db).split() == \
        pg.psql("SELECT count(*), sum(id) FROM items", src_db).split()


def test_daily_copies_signed_backups_and_the_drill_restores_from_the_copy_refusing_a_planted_one(
        run_playbook, pg, tmp_path):
    """The backup role with copy_to and signing keys, then the drill from the second location
    with trusted_signing_keys: one database restores and verifies from the copy, the other's
    planted (unsigned, valid sha256) newer backup is refused with one line naming it. A third
    database whose copies fail (on_failure: warn) is fresh at the primary but stale at the copy:
    the daily run fails on the RPO at the copy, the HTML report shows the copy location's
    freshness per series, and the metrics carry location="copy" series that OpskitBackupStale
    fires on (promtool on the exported files)."""
    shops = [name("cp_shop"), name("cp_other"), name("cp_nocopy")]
    for db in shops:
        pg.createdb(db)
        pg.psql("CREATE TABLE orders (id int PRIMARY KEY, total numeric);"
                " INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 300) g;", db=db)
    private, public = _ed25519(tmp_path)
    offsite, metrics = tmp_path / "offsite", tmp_path / "metrics"
    offsite.mkdir()
    metrics.mkdir()
    nocopy = "t-pg-%s" % shops[2]
    (offsite / nocopy).write_text("not a directory\n")  # the copies of this series fail
    extra = {
        "opskit_location": "file://%s/backups" % tmp_path, "opskit_report_dir": str(tmp_path / "reports"),
        "opskit_series_prefix": "t-", "opskit_postgres": role_conn(pg), "opskit_disk_paths": [str(tmp_path)],
        "opskit_lock_dir": str(tmp_path / "locks"), "opskit_metrics_dir": str(metrics),
        "opskit_databases": [{"name": shops[0], "verify_queries": [
            {"name": "orders", "query": "SELECT count(*) FROM orders", "expect": "300"}]}, {"name": shops[1]},
            {"name": shops[2]}],
        "opskit_storage_options": {"signing_key": private, "trusted_signing_keys": [public]},
        "opskit_copy_to": {"location": "file://%s" % offsite, "on_failure": "warn"},
        "opskit_copy_retention": {"keep_last": 3},
    }
    run = run_playbook(playbook("daily"), extra)
    assert run.rc != 0
    assert "RPO breach (24h): %s is stale at file://%s" % (nocopy, offsite) in run.stdout, run.stdout[-3000:]
    daily = reports(tmp_path / "reports", "daily")[-1]
    assert daily["copy_location"] == "file://%s" % offsite and daily["copy_stale"] == [nocopy]
    copies = {r["series"]: r["id"] for r in daily["copy_backups"]}
    assert copies == dict({r["series"]: r["id"] for r in daily["backups"]}, **{nocopy: None})
    assert len(copies) == 3 and not daily["stale"]  # fresh at the primary
    _check_copy_html(tmp_path / "reports", offsite, copies, nocopy)
    _check_copy_metrics(metrics, tmp_path, daily, nocopy)
    series = "t-pg-%s" % shops[1]
    copied = FileLocation(str(offsite))
    signed = list_backups(copied, series)[series][0]
    assert signed["signature"]["key_id"].startswith("SHA256:")

    # someone with write access to the second location plants a newer, unsigned backup
    with BackupSession(copied, series, "postgres") as session:
        with session.artifact("dump") as out:
            out.write((tmp_path / "backups" / series / signed["artifact"]).read_bytes())
        planted = session.publish(source=signed["source"])
    drill = run_playbook(playbook("dr_drill"), dict(extra, opskit_restore_from="copy"))
    assert drill.rc != 0
    doc = reports(tmp_path / "reports", "dr_drill")[-1]
    assert doc["restored_from"] == "copy"
    assets = {a["name"]: a for a in doc["assets"]}
    assert assets[shops[0]]["verification"] == "passed"
    error = assets[shops[1]]["error"]
    assert "backup %s of series %s is not signed, and trusted_signing_keys are set: refused" % (planted["id"], series) \
        in error and "\n" not in error
    verified = list_backups(copied, "t-pg-%s" % shops[0])["t-pg-%s" % shops[0]][0]
    assert verified["verification"]["result"] == "passed"  # recorded at the copy it was restored from
    assert assets[shops[2]]["error"] == "series %s has no backups at file://%s" % (nocopy, offsite)


def _check_copy_html(report_dir, offsite, copies, nocopy):
    """The daily HTML page: the copy location's URL and one row per series (newest at the copy,
    age, stale/ok)."""
    (html,) = sorted(report_dir.glob("daily-*.html"))[-1:]
    page = html.read_text()
    assert '<code id="copy-url">file://%s</code>' % offsite in page
    table = page.split('<table id="copy-table">', 1)[1].split("</table>", 1)[0]
    rows = {re.search(r"<td>([^<]+)</td>", r).group(1): r for r in table.split("<tr>")[2:]}
    assert sorted(rows) == sorted(copies)
    for series, backup_id in copies.items():
        row = rows[series]
        assert "<td>postgres</td><td>%s</td>" % (backup_id or "none") in row, row
        assert ('class="bad">stale</td>' if series == nocopy else 'class="ok">ok</td>') in row, row
        assert (re.search(r"</td><td>[0-9.]+ (s|min|h)</td>", row) is None) == (series == nocopy), row  # the age
    assert "Stale or missing at the copy location file://%s: %s" % (offsite, nocopy) in page


def _check_copy_metrics(metrics, workdir, daily, nocopy):
    """opskit_backup.prom: the primary's series unchanged, location="copy" series beside them;
    OpskitBackupStale fires on the exported series for the one stale only at the copy."""
    prom = (metrics / "opskit_backup.prom").read_text()
    for row in daily["backups"]:
        labels = 'host="localhost",series="%s",kind="postgres"' % row["series"]
        assert 'opskit_backup_stale{%s,rpo="24h"} 0\n' % labels in prom
        copy_stale = 'opskit_backup_stale{%s,rpo="24h",location="copy"} ' % labels
        assert copy_stale + ("1\n" if row["series"] == nocopy else "0\n") in prom
        copied_at = 'opskit_backup_last_success_timestamp_seconds{%s,location="copy"} ' % labels
        assert (copied_at in prom) == (row["series"] != nocopy)
    exported = [s for s in samples(metrics) if s[0].startswith("opskit_backup_")]
    test = {"rule_files": [RULES], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": "%s{%s}" % (n, ",".join('%s="%s"' % kv for kv in sorted(lab.items()))),
                          "values": "%sx20" % v} for n, lab, v in exported],
        "alert_rule_test": [{"eval_time": "10m", "alertname": "OpskitBackupStale", "exp_alerts": [
            {"exp_labels": {"severity": "critical", "host": "localhost", "series": nocopy, "kind": "postgres",
                            "rpo": "24h", "location": "copy"},
             "exp_annotations": annotations("OpskitBackupStale", series=nocopy, host="localhost", rpo="24h")}]}]}]}
    path = workdir / "copy.test.yml"
    path.write_text(yaml.safe_dump(test))
    tested = promtool("test", "rules", str(path), cwd=str(workdir))
    assert tested.returncode == 0, tested.stdout + tested.stderr
