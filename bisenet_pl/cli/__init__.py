"""The ``bisenet-pl`` command.

- :mod:`.main`: the entry point: a tool by name, else Lightning's fit/validate/test/predict; errors in one line
- :mod:`.lightning_cli`: the LightningCLI subclass (callbacks, ``precision=auto``, ``--train_minutes``)
- :mod:`.tools`: ``stats``, ``convert``, ``sweep``, ``demo``
- :mod:`.export`: ``export``
- :mod:`.errors`: how bad input is reported
"""

from bisenet_pl.cli.lightning_cli import BiSeNetCLI, build_cli
from bisenet_pl.cli.main import main

__all__ = ["BiSeNetCLI", "build_cli", "main"]
