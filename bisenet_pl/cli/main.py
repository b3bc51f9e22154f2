"""``bisenet-pl``: the tools by name, everything else to the LightningCLI; bad input in one line."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from bisenet_pl.allocator import keep_freed_memory
from bisenet_pl.cli.errors import Interrupted, config_files, one_line, parse_error_line, user_error
from bisenet_pl.cli.export import export_command
from bisenet_pl.cli.lightning_cli import build_cli
from bisenet_pl.cli.tools import convert_command, demo_command, stats_command, sweep_command
from bisenet_pl.compat import quiet_dependency_warnings

TOOLS = {
    "stats": stats_command,
    "convert": convert_command,
    "export": export_command,
    "demo": demo_command,
    "sweep": sweep_command,
}


def stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def default_sigterm_in_child() -> None:
    """In a process forked while a tool runs, SIGTERM's default action instead of the tool's handler, which is
    Python code that a child blocked in C never gets to run: OpenVINO's telemetry sends its event from a forked
    child and terminates it after 3 s, and one such child, stuck in getaddrinfo on a lock it inherited locked,
    outlived ``export --format openvino`` with the command's stdout open (``... | tail`` never ended)."""
    if signal.getsignal(signal.SIGTERM) is stop_on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=default_sigterm_in_child)


def run_tool(name: str, args: list[str]) -> None:
    """A tool (stats, convert, export, ...) that Ctrl-C or SIGTERM ends in one line, its temporary files
    removed on the way out (they live in context managers that an exception unwinds)."""
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        TOOLS[name](args)
    except KeyboardInterrupt:
        raise Interrupted("bisenet-pl: interrupted; no output was left half-written", name) from None
    except Interrupted as stop:  # a tool's own, more precise message
        stop.tool = name
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def command() -> None:
    """The ``bisenet-pl`` program: :func:`main`; an interrupted export ends without the interpreter's
    shutdown, whose teardown of OpenVINO's threads took 2 s after an interrupt here and once never ended
    (a process asleep on a lock after Python had finished); its files are settled by then."""
    try:
        main()
    except Interrupted as stop:
        if stop.tool != "export":
            raise
        print(stop.code, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    keep_freed_memory()  # before anything is timed or trained
    quiet_dependency_warnings()
    try:
        if argv and argv[0] in TOOLS:
            run_tool(argv[0], argv[1:])
        else:
            build_cli(args)  # None: LightningCLI reads sys.argv itself
    except argparse.ArgumentError as error:
        cause = user_error(error)
        message = one_line(cause) if cause else parse_error_line(str(error), config_files(argv))
        raise SystemExit(f"bisenet-pl: error: {message} (see bisenet-pl --help)") from None
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise  # a bug, not bad input: keep the traceback
        raise SystemExit(f"bisenet-pl: error: {one_line(cause)}") from None
