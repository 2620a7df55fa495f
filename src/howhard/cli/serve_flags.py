"""Groups of ``howhard serve``'s flags: connection, upstream and shutdown limits, and menu mode
(rounds over several upstreams)."""

from __future__ import annotations

import argparse


def menu_flags(p: argparse.ArgumentParser) -> None:
    """--menu, --policy, --knob, the per-request and global caps, the request log, --report."""
    menu = p.add_argument_group(
        "menu mode ([[decoder]] tables in --config, or --menu): rounds over several upstreams"
    )
    menu.add_argument("--menu", help="menu file of decoders (as howhard compare --menu)")
    menu.add_argument(
        "--policy", help="policy family, e.g. escalate, cascade, sequential-menu (howhard.stopping)"
    )
    menu.add_argument("--knob", type=float, help="fix the family's knob (no pacing)")
    menu.add_argument("--max-rounds", type=int, help="rounds one request may never exceed (8)")
    menu.add_argument("--max-cost", type=float, help="cost one request may never exceed")
    menu.add_argument("--max-seconds", type=float, help="wall time of one request's rounds")
    menu.add_argument(
        "--max-spend-per-second", type=float, help="spend over all requests per second, at most"
    )
    menu.add_argument(
        "--on-upstream-failure", help="fail (default) or partial: answer from what was drawn"
    )
    menu.add_argument("--request-log", help="JSONL file: one line per request that drew")
    menu.add_argument(
        "--report",
        metavar="LOG",
        help="print the realised cost of a request log (vs --budget if given) and exit",
    )


def connection_flags(p: argparse.ArgumentParser) -> None:
    """The slow-client and connection limits, the upstream's timeout, the shutdown deadline."""
    for flag, kind, text in [
        ("--header-timeout", float, "seconds a client has to send a request's headers (10)"),
        ("--body-timeout", float, "seconds to send a body after the headers, then 408 (30)"),
        ("--keep-alive-timeout", float, "seconds an idle connection is kept open (5)"),
        ("--max-connections", int, "connections at once; requests beyond get 503 (512)"),
        ("--timeout", float, "seconds an upstream request may take, then retried or 504 (300)"),
        ("--retries", int, "retries of an upstream request that failed or timed out (2)"),
        ("--shutdown-timeout", float, "seconds SIGTERM lets requests finish, then cancels (30)"),
    ]:
        p.add_argument(flag, type=kind, help=text)
