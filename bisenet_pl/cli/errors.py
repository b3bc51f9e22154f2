"""Bad input reported as one line: parse errors, config files that are not YAML, wrapped user errors."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException

from bisenet_pl.errors import UserError


class Interrupted(SystemExit):
    """Ctrl-C or SIGTERM ended ``tool``; its temporary files are already removed."""

    def __init__(self, message: str, tool: str | None = None) -> None:
        super().__init__(message)
        self.tool = tool


def config_files(argv: list[str]) -> list[str]:
    """The files given with ``--config`` (``--config F`` or ``--config=F``)."""
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return files + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]


def parse_error_line(message: str, configs: list[str]) -> str:
    """jsonargparse's nested report in one line: the option as typed and what was wrong; a YAML
    syntax error with the config file it is in (jsonargparse names it ``<unicode string>``)."""
    if "<unicode string>" in message:
        for config in configs:
            try:
                yaml.safe_load(Path(config).read_text())
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                return f"--config {config}: not valid YAML{where}: {getattr(error, 'problem', None) or error}"
            except OSError:
                continue
    # Nested 'Parser key "data": ... Parser key "batch_size": ... Expected a <int>. Got value: abc'
    # lines; a Union lists one "Expected a ..." per alternative, then "Given value: ...", and an
    # Optional's "Expected a <class 'NoneType'>" alternative is noise.
    keys = re.findall(r'Parser key "([^"]+)"', message)
    if ".".join(keys).startswith("trainer.logger") and "NestedArg(" in message:
        return (
            "--trainer.logger.init_args.*: no logger is named to take them. The CSV log goes to "
            "--trainer.default_root_dir (the configs no longer name a CSVLogger); to set a logger's options, "
            "name it first (--trainer.logger=CLASS, or --config configs/wandb.yaml)"
        )
    refused = re.search(r"given class_path '([^']+)':\s*Option '([^']+)' is not accepted", message)
    if keys and refused:  # an option the chosen class does not take (a typo, or no class chosen yet)
        class_path, option = refused.groups()
        unchosen = class_path in ("lightning.LightningDataModule", "lightning.LightningModule")
        hint = f" (none is chosen: give --config configs/NAME.yaml or --{keys[0]}=CLASS)" if unchosen else ""
        return f"--{'.'.join(keys)}.{option}: not an option of {class_path}{hint}"
    reasons = [line.strip().removeprefix("- ") for line in message.splitlines()]
    expected = [r for r in reasons if r.startswith("Expected a") and "NoneType" not in r]
    given = next((r.removeprefix("Given value: ") for r in reasons if r.startswith("Given value: ")), None)
    if keys and len(expected) == 1:
        return f"--{'.'.join(keys)}: {expected[0]}"
    if keys and expected:
        alternatives = " or ".join(r.removeprefix("Expected a ") for r in expected)
        return f"--{'.'.join(keys)}: Expected {alternatives}. Got value: {given}"
    return message.strip().splitlines()[0]


def user_error(error: BaseException | None) -> BaseException | None:
    """The bad-input error behind ``error`` (jsonargparse and Lightning wrap the original);
    Lightning's own MisconfigurationException about a trainer option counts as one."""
    while error is not None:
        if isinstance(error, (UserError, FileNotFoundError, MisconfigurationException)):
            return error
        error = error.__cause__ or error.__context__
    return None


def one_line(error: BaseException) -> str:
    """The error's own message, without the worker traceback a DataLoader worker wraps it in."""
    message = str(error).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message or type(error).__name__
