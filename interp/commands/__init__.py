"""The ``gar`` commands of the interp package: ``patch``, ``heads``, ``intervene``, ``probe``,
``circuit``, ``circuit-overlap``.

Each module owns its arguments (``register(subparsers)``) and its run (``main(args) -> exit code``);
the options several commands share are declared once in :mod:`interp.commands.options`. The ``gar``
command line (``gar_tasks.cli``) finds them through the ``gar.commands`` entry-point group declared
in ``pyproject.toml``, so the data package never imports ``interp``.
"""

COMMANDS = ("patch", "heads", "intervene", "probe", "circuit", "circuit-overlap")

__all__ = ["COMMANDS"]
