"""CLI: `sovcli policy check [MODEL]` - the site policy in force, and its verdict on a model."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sovcli.cli.options import JsonOption

policy_app = typer.Typer(
    name="policy",
    help="The site policy (SOVCLI_POLICY, else /etc/sovcli/policy.toml): what it allows and "
    "why.\n\n\b\nExamples:\n  sovcli policy check\n  sovcli policy check smollm2-135m --json",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ActionOption = Annotated[
    str,
    typer.Option(
        "--action",
        help="The action to judge: run, chat, serve, batch, bench, embed, export, sign, pull, "
        "import.",
    ),
]


@policy_app.command("check")
def check_command(
    model: Annotated[
        str | None,
        typer.Argument(help="An installed model (name[:tag]) or a .gguf path.", show_default=False),
    ] = None,
    action: ActionOption = "run",
    json_output: JsonOption = False,
) -> None:
    """Show which policy file is in force (path, sha256) and its rules; with MODEL, each
    rule's verdict on it and why. Exit 0 allowed, 11 denied, 12 policy malformed.

    \b
    Examples:
      sovcli policy check
      sovcli policy check smollm2-135m
      SOVCLI_POLICY=./policy.toml sovcli policy check smollm2-135m:Q4_1 --action serve --json
    """
    from sovcli.errors import PolicyDenied, PolicyError, UsageError
    from sovcli.governance.policy import ACTIONS, describe_policy

    if action not in ACTIONS:
        raise UsageError(f"unknown --action {action!r}", hint=f"One of: {', '.join(ACTIONS)}.")
    try:
        described = describe_policy()
    except PolicyError as exc:
        if json_output:
            _print_json({"ok": False, "exit": exc.exit_code, "error": exc.message})
            raise typer.Exit(exc.exit_code) from None
        raise
    report: dict[str, Any] = {"policy": described}
    if model is not None:
        report |= _judge(model, action)
    if json_output:
        _print_json(report)
    else:
        _print_report(report)
    if report.get("allowed", True):
        return
    if json_output:
        raise typer.Exit(PolicyDenied.exit_code)
    first = next(v for v in report["verdicts"] if v["verdict"] == "deny")
    raise PolicyDenied(
        f"policy {described['path']} denies {report['action']} of {report['model']}: "
        f"rule {first['rule']}: {first['reason']}"
    )


def _judge(ref: str, action: str) -> dict[str, Any]:
    """The verdicts on `action` of the installed model `ref`; for a model not installed,
    the verdicts on pulling it from each of its sources."""
    from sovcli.governance.policy import check_use, digest_of
    from sovcli.resolve import find_installed

    model = find_installed(ref)
    if model is None:
        return _judge_pull(ref)
    verdicts = [v.as_dict() for v in check_use(model, action)]
    return {
        "model": model.ref if model.tag != "local" else str(model.gguf_path),
        "installed": True,
        "digest": digest_of(model),
        "action": action,
        "allowed": all(v["verdict"] != "deny" for v in verdicts),
        "verdicts": verdicts,
    }


def _judge_pull(ref: str) -> dict[str, Any]:
    """A model not installed: may it be pulled, and from which of its sources?"""
    from sovcli.governance.policy import check_source
    from sovcli.resolve import pull_sources

    sources = []
    for kind, location, model, label in pull_sources(ref):
        verdicts = [v.as_dict() for v in check_source(kind, location, "pull", model=model)]
        allowed = all(v["verdict"] != "deny" for v in verdicts)
        sources.append({"source": label, "allowed": allowed, "verdicts": verdicts})
    return {
        "model": ref,
        "installed": False,
        "action": "pull",
        "allowed": any(s["allowed"] for s in sources),
        "sources": sources,
        "verdicts": [v for s in sources for v in s["verdicts"]],
    }


def _print_json(obj: Any) -> None:
    from sovcli.cli.output import print_json

    print_json(obj)


def _print_report(report: dict[str, Any]) -> None:
    described = report["policy"]
    if not described["in_force"]:
        typer.echo(
            f"no site policy: SOVCLI_POLICY is unset and {described['looked_at']} does not "
            "exist; every command behaves as without a policy"
        )
    else:
        typer.echo(f"policy {described['path']}")
        typer.echo(f"sha256 {described['sha256']}")
        for rule, value in described["rules"].items():
            typer.echo(f"  {rule:<24} {_shown(rule, value)}")
    if "model" not in report:
        return
    if report["installed"]:
        digest = f" ({report['digest']})" if report.get("digest") else ""
        typer.echo(f"{report['action']} of {report['model']}{digest}:")
        _print_verdicts(report["verdicts"], "  ")
    else:
        typer.echo(f"{report['model']} is not installed; pulling it:")
        for source in report["sources"]:
            typer.echo(f"  from {source['source']}: {_word(source['allowed'])}")
            _print_verdicts(source["verdicts"], "    ")
    typer.echo(_word(report["allowed"]))


def _word(allowed: bool) -> str:
    return "allowed" if allowed else "denied"


def _print_verdicts(verdicts: list[dict[str, str]], indent: str) -> None:
    for verdict in verdicts:
        typer.echo(f"{indent}{verdict['verdict']:<8} {verdict['rule']:<20} {verdict['reason']}")


def _shown(rule: str, value: Any) -> str:
    if value is None:
        return "(not set: anything)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and not value:
        return "(empty: nothing is allowed)" if rule.endswith(".allow") else "(none)"
    if isinstance(value, list):
        return ", ".join(value)
    return str(value)


UNGOVERNED = frozenset({"policy", "doctor"})
"""Commands that run with a broken policy: `policy` reports the problem, `doctor` diagnoses."""


def check_policy_readable(command: str | None) -> None:
    """Fail closed: PolicyError (exit 12) when the site policy cannot be read, for every
    command but those in UNGOVERNED. For cli/main.py to call before any command runs."""
    if command in UNGOVERNED:
        return
    from sovcli.governance.policy import current_policy

    current_policy()


COMMANDS: dict[str, Any] = {}
GROUPS: dict[str, Any] = {"policy": policy_app}
