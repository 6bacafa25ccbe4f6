"""CLI: `sovcli audit verify|seal|replay` - check, seal and replay the audit trail."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sovcli.cli.options import JsonOption

audit_app = typer.Typer(
    name="audit",
    help="The tamper-evident audit trail ($SOVCLI_AUDIT_DIR, else <SOVCLI_HOME>/audit): "
    "verify it, seal its head with the site key, replay a record.\n\n\b\nExamples:\n"
    "  sovcli audit verify\n  sovcli audit seal --key site.pem\n"
    "  sovcli audit replay results.jsonl:3",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

TrailArgument = Annotated[
    Path | None,
    typer.Argument(
        help="The audit folder, its audit.jsonl, or one rotated file (default: the site's trail).",
        show_default=False,
    ),
]


@audit_app.command("verify")
def verify_command(
    path: TrailArgument = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="Public key (PEM, or a certificate) to check the seals with."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Check the whole chain: every edited, deleted, inserted or reordered record, a truncated
    last line, and (with --key) every seal. Exit 0 when intact, 13 with each problem named
    as FILE:LINE.

    \b
    Examples:
      sovcli audit verify
      sovcli audit verify /var/log/sovcli/audit --key /etc/sovcli/keys/site.pub
      sovcli audit verify ./serve-audit.jsonl --json
    """
    from sovcli.errors import AuditError
    from sovcli.governance.audit import verify

    report = verify(path, key)
    if json_output:
        from sovcli.cli.output import print_json

        print_json(report.as_dict())
        if not report.ok:
            raise typer.Exit(AuditError.exit_code)
        return
    _print_report(report)
    if not report.ok:
        raise AuditError(
            f"the audit trail {report.path} fails verification: {len(report.problems)} "
            "problem(s), each named above as FILE:LINE",
            hint="Compare with a backup or a sealed copy; records after a problem cannot be "
            "trusted until it is explained.",
        )


def _print_report(report: Any) -> None:
    files = len(report.files)
    typer.echo(f"audit trail {report.path}: {files} file(s), {report.records} record(s)")
    typer.echo(f"starts at: {report.start}")
    if report.head_seq is not None:
        typer.echo(f"head: seq {report.head_seq} {report.head_hash}")
    for note in report.notes:
        typer.echo(f"note: {note}")
    for problem in report.problems:
        typer.echo(str(problem))
    if report.ok:
        typer.echo("ok: the chain is intact")


@audit_app.command("seal")
def seal_command(
    key: Annotated[
        Path,
        typer.Option("--key", help="The site's private key (PEM: EC P-256/P-384 or Ed25519)."),
    ],
    path: TrailArgument = None,
    json_output: JsonOption = False,
) -> None:
    """Append a seal record: the current head (seq and hash) signed with the site's key.
    `audit verify --key PUB.pem` then checks every seal.

    \b
    Examples:
      sovcli audit seal --key /etc/sovcli/keys/site.pem
      sovcli audit seal --key site.pem ./serve-audit.jsonl
    """
    from sovcli.governance.audit import seal

    record = seal(key, path)
    if json_output:
        from sovcli.cli.output import print_json

        print_json(record)
        return
    typer.echo(
        f"sealed seq {record['sealed_seq']} {record['sealed_hash']} with key {record['key_id']} "
        f"(seal record seq {record['seq']})"
    )


@audit_app.command("replay")
def replay_command(
    record: Annotated[
        str,
        typer.Argument(help="FILE:LINE of a batch result or an audit record with its content."),
    ],
    record_id: Annotated[
        str | None,
        typer.Option("--id", help="Pick the record by its id (document id) instead of a line."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Re-run one recorded answer with the recorded model (same digest), prompt and
    parameters, and say whether the output is byte-identical. Exit 0 match, 7 differ.

    \b
    Examples:
      sovcli audit replay results.jsonl:3
      sovcli audit replay results.jsonl --id docs/memo1.txt
      sovcli audit replay ~/.local/share/sovcli/audit/audit.jsonl:120 --json
    """
    from sovcli.errors import IntegrityError
    from sovcli.governance.audit import audit_event

    path, which = _record_address(record, record_id)
    replay_record = _replayer()
    result = replay_record(path, which)
    audit_event("replay", source=str(path), record=which, matches=bool(result.matches))
    if json_output:
        from sovcli.cli.output import print_json

        print_json(
            {
                "matches": result.matches,
                "expected": result.expected,
                "actual": result.actual,
                "detail": result.detail,
            }
        )
    elif result.matches:
        typer.echo(f"match: {path}:{which} replays byte for byte ({result.detail})")
    if not result.matches:
        if json_output:
            raise typer.Exit(IntegrityError.exit_code)
        raise IntegrityError(
            f"the replay of {path}:{which} differs: {result.detail}",
            hint="The model, the engine or the settings differ from the "
            "recorded run; see `sovcli audit replay --json` for both outputs.",
        )


def _record_address(record: str, record_id: str | None) -> tuple[Path, int | str]:
    """(file, line number or id) from `FILE:LINE` or `FILE --id ID`."""
    from sovcli.errors import UsageError

    if record_id is not None:
        return Path(record), record_id
    head, sep, tail = record.rpartition(":")
    if sep and tail.isdigit() and int(tail) >= 1 and not Path(record).exists():
        return Path(head), int(tail)
    raise UsageError(
        f"which record of {record}?",
        hint="Give FILE:LINE (e.g. results.jsonl:3) or FILE --id DOCUMENT_ID.",
    )


def _replayer() -> Any:
    """`sovcli.batch.replay.replay_record` (imported when used: it loads the engine)."""
    from sovcli.errors import UsageError

    try:
        from sovcli.batch.replay import replay_record
    except ImportError:
        raise UsageError(
            "audit replay is not available in this build (sovcli.batch.replay is missing)"
        ) from None
    return replay_record


COMMANDS: dict[str, Any] = {}
GROUPS: dict[str, Any] = {"audit": audit_app}
