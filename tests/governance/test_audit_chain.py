"""The audit trail's chain: records, tampering named by `sovcli audit verify`, rotation,
retention, repair of a half-written line, seals, and a trail that cannot be written."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sovcli.cli.main import app
from sovcli.errors import AuditError
from sovcli.governance import audit
from sovcli.governance.audit_chain import ChainWriter
from sovcli.governance.audit_files import GENESIS, ChainFiles, canonical_line, line_hash

from .conftest import run_sovcli


@pytest.fixture
def trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh audit folder for this test (SOVCLI_AUDIT_DIR)."""
    folder = tmp_path / "audit"
    monkeypatch.setenv("SOVCLI_AUDIT_DIR", str(folder))
    monkeypatch.delenv("SOVCLI_AUDIT", raising=False)
    monkeypatch.delenv("SOVCLI_AUDIT_CONTENT", raising=False)
    return folder


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_events(count: int, **fields) -> None:
    for n in range(count):
        audit.audit_event("run", n=n, model_digest="sha256:" + "ab" * 32, **fields)


def cli(*args: str | Path):
    """`sovcli ARGS` in-process (typer's runner)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def verify(*args: str | Path) -> tuple[int, str]:
    """`sovcli audit verify ARGS` (in-process: typer's runner): exit code and output."""
    result = CliRunner().invoke(app, ["audit", "verify", *map(str, args)])
    return result.exit_code, result.output


# ---- records -------------------------------------------------------------------------------
def test_records_are_chained_and_hold_no_content(trail):
    """Also the one check through a real `sovcli` process."""
    write_events(3, prompt="the secret prompt", completion="the secret answer", prompt_tokens=7)
    lines = (trail / "audit.jsonl").read_bytes().splitlines()
    got = [json.loads(line) for line in lines]
    assert [r["seq"] for r in got] == [1, 2, 3]
    assert got[0]["prev"] == GENESIS
    assert got[1]["prev"] == line_hash(lines[0]) and got[2]["prev"] == line_hash(lines[1])
    for record in got:
        assert record["event"] == "run" and record["pid"] == os.getpid()
        assert record["user"] and record["host"] and record["time"].endswith("Z")
        assert record["prompt_tokens"] == 7 and "command" in record
        assert "prompt" not in record and "completion" not in record
        assert (
            canonical_line(record)
            == json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        )
    assert "secret" not in (trail / "audit.jsonl").read_text()
    result = run_sovcli("audit", "verify")
    code, out = result.returncode, result.stdout
    assert code == 0, out
    assert "3 record(s)" in out and "ok: the chain is intact" in out
    assert "starts at: seq 1, the start of the chain" in out


def test_content_only_when_asked(trail, monkeypatch):
    monkeypatch.setenv("SOVCLI_AUDIT_CONTENT", "1")
    audit.audit_event("run", prompt="caf\ud800 \x1b[2J\u2028x", completion="ok")
    raw = (trail / "audit.jsonl").read_bytes()
    assert raw.count(b"\n") == 1 and b"\x1b" not in raw  # escaped, one whole line
    assert records(trail / "audit.jsonl")[0]["prompt"] == "caf\ud800 \x1b[2J\u2028x"


def test_audit_off_writes_nothing(trail, monkeypatch):
    monkeypatch.setenv("SOVCLI_AUDIT", "0")
    record = audit.audit_event("run", n=1)
    assert record["event"] == "run" and "seq" not in record
    assert not trail.exists()


def test_an_unwritable_trail_stops_with_an_audit_error(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the audit folder should be")
    monkeypatch.setenv("SOVCLI_AUDIT_DIR", str(blocker / "audit"))
    with pytest.raises(AuditError, match="cannot write the audit trail") as caught:
        audit.audit_event("run")
    assert caught.value.exit_code == 13 and "SOVCLI_AUDIT_DIR" in (caught.value.hint or "")
    result = cli("audit", "seal", "--key", tmp_path / "missing.pem")
    assert result.exit_code == 13 and "cannot read the key" in result.stderr


# ---- tampering -----------------------------------------------------------------------------
def _forged(lines: list[str], index: int) -> str:
    """A record with the seq and prev of line `index`, different content (a clever insert)."""
    record = json.loads(lines[index])
    record["n"] = 999
    return canonical_line(record).decode()


TAMPERING = {
    "edited": (lambda ls: [*ls[:3], ls[3].replace('"n":3', '"n":4'), *ls[4:]], "4: edited"),
    "edited_seq": (
        lambda ls: [*ls[:3], ls[3].replace('"seq":4', '"seq":40'), *ls[4:]],
        "4: edited",
    ),
    "deleted": (lambda ls: ls[:4] + ls[5:], "5: deleted: seq 5 missing"),
    "deleted_run": (lambda ls: ls[:2] + ls[5:], "3: deleted: seq 3..5 missing"),
    "inserted_copy": (lambda ls: [*ls[:5], ls[2], *ls[5:]], "6: inserted: a copy"),
    "inserted_forged": (lambda ls: [*ls[:5], _forged(ls, 4), *ls[5:]], "6: inserted"),
    "inserted_junk_seq": (
        lambda ls: [*ls[:5], ls[7].replace('"n":7', '"n":70'), *ls[5:]],
        "6: inserted",
    ),
    "reordered": (lambda ls: [*ls[:3], ls[4], ls[3], *ls[5:]], "4: reordered"),
    "moved_to_end": (lambda ls: ls[:2] + ls[3:] + [ls[2]], "3: reordered"),
    "truncated": (lambda ls: [*ls[:-1], ls[-1][:-20]], "8: truncated"),
    "deleted_at_end": (lambda ls: ls[:-2], "6: deleted: seq 7..8 missing at the end"),
    "deleted_at_start": (lambda ls: ls[2:], "1: deleted: the chain starts at seq 3"),
    "edited_last": (lambda ls: [*ls[:-1], ls[-1].replace('"n":7', '"n":8')], "8: edited"),
    "malformed": (lambda ls: [*ls[:3], "{not json\n", *ls[4:]], "4: malformed"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_verify_names_each_tampering_with_its_line(trail, case):
    write_events(8)
    active = trail / "audit.jsonl"
    assert verify()[0] == 0
    change, expected = TAMPERING[case]
    lines = active.read_text(encoding="utf-8").splitlines(keepends=True)
    active.write_text("".join(change(lines)), encoding="utf-8")
    code, out = verify()
    assert code == 13, out
    problems = [x for x in out.splitlines() if x.startswith("audit.jsonl:")]
    assert problems and problems[0].startswith(f"audit.jsonl:{expected}"), out
    assert len(problems) <= 2, out  # named once, not a cascade of follow-on errors
    assert "fails verification" in out


def test_verify_json_lists_problems(trail):
    write_events(4)
    active = trail / "audit.jsonl"
    lines = active.read_text().splitlines(keepends=True)
    active.write_text("".join(lines[:1] + lines[2:]))
    result = cli("audit", "verify", "--json")
    assert result.exit_code == 13
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["problems"] == [
        {
            "file": "audit.jsonl",
            "line": 2,
            "kind": "deleted",
            "message": "seq 2 missing before this record (after audit.jsonl:1)",
        }
    ]


# ---- rotation and retention ----------------------------------------------------------------
def test_rotation_by_size_keeps_one_chain(trail, monkeypatch):
    monkeypatch.setenv("SOVCLI_AUDIT_ROTATE_SIZE", "2k")
    write_events(60)
    files = ChainFiles.at(trail)
    rotated = files.rotated()
    assert len(rotated) >= 4
    for path in rotated:
        assert path.stat().st_size <= 2048 + 400  # rotated before a record would pass the size
    for path in [*rotated[1:], files.active]:
        first = records(path)[0]
        assert first["event"] == "audit_anchor" and first["prev"] == first["after_hash"]
    seqs = [r["seq"] for path in files.all_files() for r in records(path)]
    assert seqs == list(range(1, len(seqs) + 1))
    code, out = verify()
    assert code == 0, out
    assert f"{len(rotated) + 1} file(s)" in out
    # Editing a record inside a rotated file is named with that file.
    victim = rotated[1]
    text = victim.read_text().replace('"n":', '"n":1', 1)
    victim.write_text(text)
    code, out = verify()
    assert code == 13 and f"{victim.name}:2: edited" in out, out


def test_a_deleted_middle_file_is_named(trail, monkeypatch):
    monkeypatch.setenv("SOVCLI_AUDIT_ROTATE_SIZE", "2k")
    write_events(40)
    rotated = ChainFiles.at(trail).rotated()
    rotated[1].unlink()
    code, out = verify()
    assert code == 13
    assert f"{rotated[2].name}:1: deleted" in out, out


def test_daily_rotation(trail):
    writer = audit.configure(ChainWriter(ChainFiles.at(trail)))
    day = datetime(2026, 11, 29, 23, 59, tzinfo=timezone.utc)
    writer.clock = lambda: day
    writer.append({"event": "run"})
    writer.append({"event": "run"})
    day += timedelta(minutes=2)
    writer.append({"event": "run"})
    writer.close()
    files = ChainFiles.at(trail)
    assert [p.name for p in files.rotated()] == ["audit.000000000001.20261129.jsonl"]
    anchor, third = records(files.active)
    assert anchor["event"] == "audit_anchor" and anchor["time"].startswith("2026-11-30")
    assert anchor["after_seq"] == 2 and third["seq"] == 4
    assert verify()[0] == 0


def test_retention_deletes_old_files_and_verify_stays_green(trail, monkeypatch):
    monkeypatch.setenv("SOVCLI_AUDIT_ROTATE_SIZE", "2k")
    write_events(60)
    files = ChainFiles.at(trail)
    rotated = files.rotated()
    old = time.time() - 10 * 86400
    for path in rotated[:3]:
        os.utime(path, (old, old))
    monkeypatch.setenv("SOVCLI_AUDIT_RETENTION_DAYS", "7")
    write_events(30)  # the next rotation applies the retention
    names = [p.name for p in files.rotated()]
    assert not {p.name for p in rotated[:3]} & set(names)
    assert rotated[3].name in names
    code, out = verify()
    assert code == 0, out
    kept_from = records(rotated[3])[0]["seq"]
    assert f"starts at: seq {kept_from}: an anchor after {rotated[2].name}" in out
    assert "retention deleted " + rotated[0].name in out
    retention = [
        r for p in files.all_files() for r in records(p) if r["event"] == "audit_retention"
    ]
    assert retention[0]["deleted"] == [p.name for p in rotated[:3]]


# ---- a writer that died mid-line -----------------------------------------------------------
def test_a_half_written_line_is_named_then_repaired(trail):
    write_events(3)
    active = trail / "audit.jsonl"
    with open(active, "ab") as handle:
        handle.write(b'{"event":"run","n":99,"se')  # a writer killed mid-write
    code, out = verify()
    assert code == 13 and "audit.jsonl:4: truncated" in out
    write_events(1)  # the next writer cuts the half line off and records that
    got = records(active)
    assert [r["seq"] for r in got] == [1, 2, 3, 4, 5]
    assert got[3]["event"] == "audit_repair" and got[3]["cut_bytes"] == 25
    code, out = verify()
    assert code == 0, out
    assert "a writer cut off a partial line of 25 bytes" in out


# ---- seals ---------------------------------------------------------------------------------
def _rechain(path: Path) -> None:
    """What an attacker who can write the file does: edit, then recompute every link."""
    lines = path.read_text().splitlines()
    prev, out = GENESIS, []
    for n, line in enumerate(lines):
        record = json.loads(line)
        if n == 1:
            record["n"] = 12345
        record["prev"] = prev
        if record["event"] == "audit_seal":
            record["sealed_hash"] = prev
        encoded = canonical_line(record)
        prev = line_hash(encoded)
        out.append(encoded.decode())
    path.write_text("".join(out))
    ChainFiles.at(path).head.write_text(f"{len(lines):020d} {prev}\n")


def test_seal_signs_the_head_and_verify_checks_it(trail, site_keys, rogue_keys):
    write_events(3)
    result = cli("audit", "seal", "--key", site_keys.private)
    assert result.exit_code == 0, result.output
    assert "sealed seq 3" in result.stdout
    seal = records(trail / "audit.jsonl")[-1]
    assert seal["event"] == "audit_seal" and seal["sealed_seq"] == 3 and seal["seq"] == 4
    assert seal["command"] == "audit seal"
    write_events(2)
    code, out = verify("--key", site_keys.public)
    assert code == 0, out
    assert "1 seal(s) verified with the key; 2 record(s) after the last one" in out
    code, out = verify("--key", rogue_keys.public)
    assert code == 13 and "audit.jsonl:4: seal: sealed by another key" in out
    code, out = verify()
    assert code == 0 and "1 seal(s) not checked" in out
    # An attacker who rewrites the whole chain fools the links, not the seal.
    _rechain(trail / "audit.jsonl")
    assert verify()[0] == 0
    code, out = verify("--key", site_keys.public)
    assert code == 13
    assert "audit.jsonl:4: seal: the seal's signature does not verify" in out, out


def test_seal_with_an_ed25519_key_and_a_bad_key_file(trail, tmp_path):
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key, pem = ed25519.Ed25519PrivateKey.generate(), ser.Encoding.PEM
    private, public = tmp_path / "ed.pem", tmp_path / "ed.pub"
    private.write_bytes(key.private_bytes(pem, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(pem, ser.PublicFormat.SubjectPublicKeyInfo))
    write_events(2)
    audit.seal(private)
    assert verify("--key", public)[0] == 0
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    result = cli("audit", "seal", "--key", junk)
    assert result.exit_code == 13 and "is not a PEM private key" in result.stderr
    assert "Traceback" not in result.stderr


# ---- summary for the evidence pack ---------------------------------------------------------
def test_chain_summary_counts_a_models_records(trail):
    write_events(3)
    audit.audit_event("policy", decision="allow", digest="sha256:" + "ab" * 32)
    audit.audit_event("run", model_digest="sha256:" + "cd" * 32)
    summary = audit.chain_summary("sha256:" + "ab" * 32)
    assert summary["records"] == 5 and summary["verified"] is True
    assert summary["events"] == {"policy": 1, "run": 3} and summary["model_records"] == 4
    assert summary["head"]["seq"] == 5
    assert audit.chain_summary()["events"] == {"policy": 1, "run": 4}


def test_verify_of_a_missing_trail_is_one_line(tmp_path):
    result = cli("audit", "verify", tmp_path / "nowhere")
    assert result.exit_code == 13
    assert result.stderr.startswith("error: no audit trail at") and "Traceback" not in result.stderr


# ---- the server's records ----------------------------------------------------------------
def test_server_records_are_chain_records_with_the_model_digest(trail, smollm2_model):
    from sovcli.governance.identity import model_digest
    from sovcli.server.audit import AuditLog

    audit.audit_event("policy", decision="allow")  # another writer on the same chain
    log = AuditLog(trail / "audit.jsonl")
    started = "2026-11-30T08:00:00+00:00"
    assert log.write(
        {
            "time": started,
            "model": "smollm2-135m:Q4_1",
            "status": 200,
            "key_id": "team-a",
            "prompt": "secret",
        }
    )
    assert log.write({"time": started, "model": "no-such-model", "status": 404})
    log.close()
    first, second, third = records(trail / "audit.jsonl")
    assert first["event"] == "policy"
    assert second["event"] == "request" and second["command"] == "serve"
    assert second["seq"] == 2 and second["prev"] == line_hash(
        (trail / "audit.jsonl").read_bytes().splitlines()[0]
    )
    assert second["started"] == started and second["time"].endswith("Z")
    assert second["model_digest"] == model_digest(smollm2_model)
    assert second["key_id"] == "team-a" and second["user"] and "prompt" not in second
    assert "model_digest" not in third
    assert verify()[0] == 0


def test_hostile_lines_are_named_not_a_crash(trail):
    write_events(2)
    active = trail / "audit.jsonl"
    junk = [
        b"[" * 200_000 + b"]" * 200_000,  # nesting deeper than any parser's stack
        b"\xff\xfe not utf-8 \x00",
        b'{"seq": "3", "prev": "sha256:00"}',
        b'{"seq": 3, "prev": 7}',
        b"x" * 3_000_000,
    ]
    with open(active, "ab") as handle:
        handle.write(b"\n".join(junk) + b"\n")
    code, out = verify()
    assert code == 13 and "Traceback" not in out
    assert [f"audit.jsonl:{n}: malformed" in out for n in range(3, 8)] == [True] * 5
    write_events(1)  # a writer appends after junk it cannot read as a record: still whole
    assert records_tail_is_whole(active)


def records_tail_is_whole(path: Path) -> bool:
    last = path.read_bytes().splitlines()[-1]
    return json.loads(last)["event"] == "run"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda ls: [*ls[:-1], ls[-1].replace('"n":3', '"n":30')], "audit.jsonl:4: edited"),
        (lambda ls: ls[:-2], "audit.jsonl:3: deleted: seq 3..4 missing"),
    ],
    ids=["edited_last", "deleted_last"],
)
def test_the_next_writer_does_not_launder_a_change_at_the_end(trail, change, expected):
    """A writer appends after the last line: had it linked to an edited last line (or to the
    line before removed ones), the change would vanish from the chain. It links to the head
    it wrote instead, so verify still names the change."""
    write_events(4)
    active = trail / "audit.jsonl"
    lines = active.read_text().splitlines(keepends=True)
    active.write_text("".join(change(lines)))
    write_events(1)  # another command appends
    code, out = verify()
    assert code == 13 and expected in out, out
