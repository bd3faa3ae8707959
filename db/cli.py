"""``cxr-db``: create or migrate the database, back it up, and manage reviewer accounts (also lifting an account's
sign-in delays)."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import logging
import sys
from pathlib import Path

from db import attributions, config, migrate, results, reviewers, signin
from db.backup import backup_database
from db.clitools import ESCAPES_HELP, add_db_option, add_verbose_option, printable, run_cli
from db.diagnose import shown_url
from db.engine import get_engine, read_session, write_session
from db.models import utcnow
from db.passwords import MIN_ADMIN_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, PasswordPolicyError, min_password_length
from db.paths import to_fs

log = logging.getLogger("cxr.db")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-db", description=__doc__, epilog=f"Output: {ESCAPES_HELP}.")
    add_db_option(parser)
    add_verbose_option(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("upgrade", help="create the database or migrate it to the newest schema")
    commands.add_parser("current", help="print the schema revision of the database and of this software")
    failures = commands.add_parser("failures", help="list the files a scoring run could not score: run, reason, "
                                                    "path, message, tab-separated, one line each",
                                   description=f"The files a scoring run could not score, one tab-separated line "
                                               f"each: run, reason, path, message. The {ESCAPES_HELP}.")
    failures.add_argument("--run", type=int, metavar="ID", help="the run (default: the latest with failures)")
    add = commands.add_parser("add-reviewer", help="create a reviewer account")
    add.add_argument("name", help="login name")
    add.add_argument("--role", choices=["reviewer", "admin"], default="reviewer")
    add.add_argument("--display-name", help="name shown in the dashboard")
    password = commands.add_parser("set-password", help="set a reviewer's password")
    password.add_argument("name")
    for command in (add, password):
        command.add_argument("--password-stdin", action="store_true",
                             help="read the password from the first line of standard input instead of a prompt")
    commands.add_parser("reviewers", help="list reviewer accounts",
                        description=f"Reviewer accounts: name, role, state, display name. The {ESCAPES_HELP}.")
    backup = commands.add_parser("backup", help="a consistent copy of a live SQLite database (safe while the "
                                                "scorer and reviewers write)")
    backup.add_argument("destination", type=Path, metavar="DEST",
                        help="a file (replaced whole), or a folder for a new dated copy (never over another one); "
                             "refused: the database itself or its -wal, -shm or -journal files (also through a "
                             "link), and anything that is not a regular file or a folder")
    prune = commands.add_parser("prune-attributions", help="delete cached attribution maps of model versions that "
                                                           "are not active, older than DAYS, and map files left by "
                                                           "killed writes or without a record (an hour old)")
    prune.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    prune.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    for verb in ("deactivate", "activate"):
        commands.add_parser(verb, help=f"{verb} a reviewer account (its reviews stay)").add_argument("name")
    commands.add_parser("unlock", help="lift the sign-in delays of an account after failed attempts (they count "
                                       "from zero again)").add_argument("name")
    commands.add_parser("reset-sign-on", help="unbind an account from the single sign-on user that opened it first "
                                              "(the next verified sign-in binds it again)").add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, log, _dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "backup":
        made = backup_database(config.database_url(args.db), args.destination)
        print(f"{printable(made.path)}\t{made.size_bytes} bytes\t{made.seconds} s\tintegrity {made.integrity}")
        return 0
    engine = get_engine(args.db)
    if args.command == "upgrade":
        return _upgrade(engine)
    if args.command == "current":
        print(f"database: {printable(migrate.current_revision(engine) or 'empty')}; "
              f"software: {migrate.head_revision()}")
        return 0
    migrate.require_current(engine)
    if args.command == "failures":
        return _list_failures(engine, args.run)
    if args.command == "reviewers":
        return _list_reviewers(engine)
    if args.command == "prune-attributions":
        return _prune_attributions(engine, args.older_than, args.dry_run)
    return _change_reviewer(engine, args)


def _upgrade(engine) -> int:
    done = migrate.upgrade(engine)
    log.info("database %s: %s", shown_url(engine.url.render_as_string(hide_password=False)),
             f"migrated {done.before or 'empty'} -> {done.after}" if done.changed else f"already at {done.after}")
    return 0


def _list_failures(engine, run_id: int | None) -> int:
    """Tab-separated: run, reason, path, message, each escaped by :func:`printable` (a name holding a tab or a
    newline must not break its record). A path prints as it is stored (read back first: a path stored before
    paths were escaped is escaped here). Paths may identify patients: this goes to stdout, not a log."""
    with read_session(engine) as session:
        for failure in results.run_failures(session, run_id):
            print("\t".join(printable(value) for value in (failure.run_id, failure.reason, to_fs(failure.path),
                                                             failure.message)))
    return 0


def _list_reviewers(engine) -> int:
    with read_session(engine) as session:
        for r in reviewers.list_reviewers(session):
            state = "active" if r.is_active else "deactivated"
            print(f"{printable(r.username):<24} {printable(r.role):<9} {state:<12} {printable(r.display_name or '')}")
    return 0


def _prune_attributions(engine, days: float, dry_run: bool) -> int:
    """Records first, then files: an interrupted prune leaves unreferenced files, never a record without one."""
    if not days >= 0:
        log.error("--older-than must be a number of days, 0 or more")
        return 1
    cutoff = utcnow() - dt.timedelta(days=days)
    with write_session(engine) as session:
        maps = attributions.prunable_maps(session, cutoff)
        if not dry_run:
            attributions.delete_maps(session, [m.id for m in maps])
    freed = 0
    home = config.cxr_home()
    for entry in maps:
        path = home / entry.storage_path
        try:
            freed += path.stat().st_size
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            continue
    log.info("%s %d attribution maps (%.1f MB) of inactive model versions older than %g days",
             "would delete" if dry_run else "deleted", len(maps), freed / 1e6, days)
    with read_session(engine) as session:  # files no record will read: killed writes, maps of dropped records
        log.info("%s", attributions.remove_stray_files(session, home, dry_run=dry_run).describe(dry_run))
    return 0


def _change_reviewer(engine, args) -> int:
    password = None
    if args.command in ("add-reviewer", "set-password"):
        password = _read_password(args.password_stdin, getattr(args, "role", None))
        if password is None:
            return 1
    try:
        with write_session(engine) as session:
            if args.command == "add-reviewer":
                reviewer = reviewers.add_reviewer(session, args.name, password, role=args.role,
                                                  display_name=args.display_name)
                log.info("added %s %r", reviewer.role, reviewer.username)
            elif args.command == "set-password":
                reviewers.set_password(session, args.name, password)
                log.info("password of %r changed; its signed-in sessions end", args.name)
            elif args.command == "reset-sign-on":
                reviewers.reset_sign_on(session, args.name)
                log.info("single sign-on binding of %r lifted; its signed-in sessions end", args.name)
            elif args.command == "unlock":
                signin.unlock(session, args.name)
                log.info("sign-in delays of %r lifted: its failed attempts count from zero again", args.name)
            else:
                reviewers.set_active(session, args.name, args.command == "activate")
                log.info("%s %r", f"{args.command}d", args.name)
    except (reviewers.ReviewerError, PasswordPolicyError) as exc:
        log.error("%s", exc)
        return 1
    return 0


def _read_password(from_stdin: bool, role: str | None) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass(f"Password ({_password_rule(role)}): ")
    if getpass.getpass("Repeat password: ") != password:
        log.error("the passwords differ; nothing was changed")
        return None
    return password


def _password_rule(role: str | None) -> str:
    """What the policy asks for (``role`` is None when setting the password of an existing account)."""
    length = (f"at least {MIN_PASSWORD_LENGTH} characters, {MIN_ADMIN_PASSWORD_LENGTH} for an admin" if role is None
              else f"at least {min_password_length(role)} characters")
    return f"{length}, not a common one, not built on the user name; a few unrelated words make a good one"


if __name__ == "__main__":
    raise SystemExit(main())
