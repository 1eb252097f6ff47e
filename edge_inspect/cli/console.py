"""`edge-inspect console`: the operator console in a browser; `console add-user`: its local users."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "console",
        help="operator console in the browser: live line, alarms, REVIEW queue, shifts, part lookup",
        description=(
            "Serve the operator console for the line whose records are in --workdir (or the config's "
            "records.workdir). It only reads the record store, in its own process, so it never slows the "
            "line. Bound to loopback unless --address says otherwise. Users log in with --users (make it "
            "with `edge-inspect console add-user`) or come authenticated from a reverse proxy "
            "(--proxy-user-header)."
        ),
    )
    p.add_argument(
        "--config", type=Path, help="the inspector's TOML config: records.workdir, [shifts], [rules]"
    )
    p.add_argument(
        "--workdir", type=Path, help="the inspector's workdir (records.sqlite, images/); overrides the config"
    )
    p.add_argument("--address", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8090, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--users", type=Path, help="users file (JSON, argon2 hashes) for logging in")
    p.add_argument(
        "--proxy-user-header",
        metavar="NAME",
        help="trust this header (e.g. X-Remote-User) as the logged-in user; only behind a proxy, on loopback",
    )
    p.add_argument(
        "--camera-timeout",
        type=float,
        default=10.0,
        help="seconds without a result before a camera is silent (default: %(default)s)",
    )
    p.add_argument(
        "--ng-rate-window",
        type=int,
        default=50,
        help="results per camera the NG-rate alarm looks at (default: %(default)s)",
    )
    p.add_argument(
        "--ng-rate-limit",
        type=float,
        default=0.2,
        help="NG share in that window that raises the alarm (default: %(default)s)",
    )
    p.set_defaults(handler=console_command)
    sub = p.add_subparsers(dest="console_command", metavar="add-user")
    add = sub.add_parser("add-user", help="add or replace a console user in a users file")
    add.add_argument("name", help="login name (letters, digits, ._@-)")
    add.add_argument(
        "--users", dest="users_file", type=Path, required=True, help="users file (created if missing)"
    )
    add.add_argument(
        "--role", choices=("operator", "engineer"), default="operator", help="(default: %(default)s)"
    )
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin instead of asking"
    )
    add.set_defaults(handler=add_user_command)


def console_command(args: argparse.Namespace) -> int:
    from edge_inspect.console.app import serve
    from edge_inspect.console.settings import ConsoleSettings, from_inspector_config
    from edge_inspect.console.users import UsersError
    from edge_inspect.inspector.config import ConfigError, load_config

    options = {
        "users_file": args.users,
        "proxy_user_header": args.proxy_user_header,
        "address": args.address,
        "port": args.port,
        "camera_timeout_s": args.camera_timeout,
        "ng_rate_window": args.ng_rate_window,
        "ng_rate_limit": args.ng_rate_limit,
    }
    try:
        if args.config is not None:
            settings = from_inspector_config(load_config(args.config), **options)
            if args.workdir is not None:
                settings = ConsoleSettings(**{**settings.__dict__, "workdir": args.workdir})
        elif args.workdir is not None:
            settings = ConsoleSettings(workdir=args.workdir, **options)
        else:
            return _fail("give --config (the inspector's config file) or --workdir (its records.workdir)")
        return serve(settings, announce=_announce)
    except (ConfigError, UsersError, ValueError, OSError) as exc:
        return _fail(str(exc))


def _announce(url: str) -> None:
    print(json.dumps({"event": "console_ready", "url": url}), flush=True)


def add_user_command(args: argparse.Namespace) -> int:
    from edge_inspect.console.users import UsersError, add_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            return _fail("the two passwords differ")
    try:
        user = add_user(args.users_file, args.name, args.role, password)
    except UsersError as exc:
        return _fail(str(exc))
    print(json.dumps({"user": user.name, "role": user.role, "users_file": str(args.users_file)}))
    return 0


def _fail(message: str) -> int:
    print(f"edge-inspect console: error: {message}", file=sys.stderr)
    return 2
