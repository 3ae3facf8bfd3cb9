"""Let the plain ``lm_eval`` CLI find the GAR tasks without ``--include_path``.

lm-eval 0.4.13 discovers tasks only under its own ``lm_eval/tasks/`` or through ``include_path``.
The package also declares the entry point proposed upstream for task plugins
(EleutherAI/lm-evaluation-harness#4015: group ``lm_eval.tasks``, value the package holding the YAML,
here ``yaml_tasks``; and ``lm_eval.models`` for our model types). A lm-eval that reads that group
finds our tasks itself: the hook then leaves ``include_path`` alone, so the folder is indexed once
(see :func:`lm_eval_reads_task_plugins`). The installed ``gar_eval_lm_eval.pth`` runs
``install()`` at interpreter start. ``install()`` only appends a tiny import hook to
``sys.meta_path`` (no lm-eval, torch or datasets import: a few microseconds). When, and only
when, a process imports ``lm_eval.tasks.manager``, the hook wraps ``TaskManager.__init__`` so that
our ``yaml_tasks`` folder is put first in ``include_path`` (a user's own ``--include_path`` still
overrides our tasks, as lm-eval gives later paths precedence). Likewise, right after
``lm_eval.models`` is imported (``get_model`` imports it on first use; it registers lm-eval's own
models as lazy placeholders, which keeps it cheap), our model types (:data:`MODELS`, e.g. ``gar-hf-intervened``)
are registered in its ``model_registry`` as lazy ``"module:Class"`` placeholders, so
``lm_eval --model gar-hf-intervened`` works and nothing of ours is imported until it is used.

The wrapped ``TaskManager.__init__`` also drops one message of lm-eval's for GAR tasks: every task
with a ``custom_dataset`` logs "Custom kwargs can be passed to ``--metadata``..." when it loads, one
identical warning per leaf (192 on ``gar_v1``); GAR's one such kwarg, ``gar_source``, is in the
README. Every other message, and this one for other tasks, passes.

Trade-off: a ``.pth`` line runs in every interpreter of the environment, so it must stay cheap and
must never fail (errors are swallowed; set ``GAR_NO_LM_EVAL_HOOK=1`` to switch it off). hatchling
installs the file for ``pip install`` and ``pip install -e`` and ``pip uninstall`` removes it.
The plain route ``--include_path "$(python -m gar_tasks.tasks_path)"`` needs no hook.
"""

from __future__ import annotations

import os
import sys

if False:  # typing.TYPE_CHECKING without importing typing (7 ms at every interpreter start)
    from pathlib import Path
    from typing import Any

TARGET = "lm_eval.tasks.manager"
TASKS_ENTRY_POINT_GROUP = "lm_eval.tasks"  # the group lm-eval's task plugins are read from
TASKS_PACKAGE = "yaml_tasks"  # our entry point's value in that group (pyproject.toml)
MODELS_MODULE = "lm_eval.models"
_PATCHED = "_gar_include_path_patched"
# our lm-eval model types: name -> lazy "module:Class" placeholder (imported only when requested)
MODELS = {"gar-hf-intervened": "interp.lm_eval_model:InterventionHFLM", "gar-ndif": "interp.lm_eval_remote:NDIFLM"}


def tasks_dir() -> "Path":
    """The folder of our lm-eval YAML tasks (the ``yaml_tasks`` package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("yaml_tasks")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the yaml_tasks package of gar-eval is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _with_ours(include_path: Any) -> list:
    """``include_path`` (None, a path, or a list) with our folder first, without duplicates."""
    from pathlib import Path

    ours = tasks_dir()
    if include_path is None:
        paths: list = []
    elif isinstance(include_path, (list, tuple)):
        paths = list(include_path)
    else:
        paths = [include_path]
    if any(Path(p).resolve() == ours.resolve() for p in paths):
        return paths
    return [ours, *paths]


CUSTOM_KWARGS_NOTICE = "Custom kwargs can be passed to `--metadata`"
TASK_LOGGER = "lm_eval.api.task"


class _GarNoticeFilter:
    """A ``logging`` filter (duck-typed) dropping lm-eval's custom-kwargs notice for GAR tasks."""

    def filter(self, record: Any) -> bool:
        msg = record.getMessage()
        return not (CUSTOM_KWARGS_NOTICE in msg and msg.startswith("gar"))


def quiet_custom_kwargs_notice() -> None:
    """Install :class:`_GarNoticeFilter` on lm-eval's task logger (idempotent)."""
    import logging

    logger = logging.getLogger(TASK_LOGGER)
    if not any(isinstance(f, _GarNoticeFilter) for f in logger.filters):
        logger.addFilter(_GarNoticeFilter())


def task_plugin_declared() -> bool:
    """Whether an installed distribution declares our tasks package in the ``lm_eval.tasks`` group."""
    from importlib.metadata import entry_points

    return any(ep.value.split(":", 1)[0].strip() == TASKS_PACKAGE
               for ep in entry_points(group=TASKS_ENTRY_POINT_GROUP))


def lm_eval_reads_task_plugins(module: Any) -> bool:
    """Whether this lm-eval's task manager discovers ``lm_eval.tasks`` entry points and ours is
    declared: then lm-eval indexes our folder itself and the hook must not add it again."""
    reads = getattr(module, "TASKS_ENTRY_POINT_GROUP", None) == TASKS_ENTRY_POINT_GROUP or \
        hasattr(module, "discover_plugin_task_paths")
    return reads and task_plugin_declared()


def patch_task_manager(module: Any) -> None:
    """Wrap ``module.TaskManager.__init__`` to add our tasks folder, unless lm-eval finds it through
    the entry point, and to drop the custom-kwargs notice of GAR tasks (idempotent)."""
    import functools
    import inspect

    cls = module.TaskManager
    if getattr(cls.__init__, _PATCHED, False):
        return
    original = cls.__init__
    sig = inspect.signature(original)
    add_path = not lm_eval_reads_task_plugins(module)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        if add_path:
            bound.arguments["include_path"] = _with_ours(bound.arguments.get("include_path"))
        quiet_custom_kwargs_notice()
        original(*bound.args, **bound.kwargs)

    setattr(__init__, _PATCHED, True)
    cls.__init__ = __init__


def register_models(module: Any = None) -> None:
    """Register :data:`MODELS` as lazy placeholders in lm-eval's ``model_registry`` (idempotent;
    a name someone else already registered is left alone).

    Called once ``lm_eval.models`` has run (it registers lm-eval's own models), never earlier:
    ``get_model`` imports ``lm_eval.models`` only while the registry is *empty*, so an entry of
    ours in an otherwise empty registry would hide every built-in model (``hf`` ...).
    """
    from lm_eval.api.registry import model_registry as registry

    for name, target in MODELS.items():
        if name not in registry:
            registry.register(name, target=target)


_PATCHERS = {TARGET: patch_task_manager, MODELS_MODULE: register_models}


class _Finder:
    """A meta-path finder (duck-typed: importing importlib.abc would cost 13 ms at every start)
    that finds nothing itself and wraps the real loaders of ``lm_eval.tasks.manager`` (adds our
    tasks folder) and ``lm_eval.models`` (registers our model types)."""

    def find_spec(self, name, path, target=None):
        patch = _PATCHERS.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                exec_module = spec.loader.exec_module

                def exec_and_patch(module, _exec=exec_module, _patch=patch):
                    _exec(module)
                    try:
                        _patch(module)
                    except Exception:  # never break lm-eval because of us
                        pass

                spec.loader.exec_module = exec_and_patch
                return spec
            if spec is not None:
                return spec
        return None


def install() -> None:
    """Install the hook (called from the ``.pth`` file; cheap, idempotent, never raises)."""
    try:
        if os.environ.get("GAR_NO_LM_EVAL_HOOK"):
            return
        for name, patch in _PATCHERS.items():
            if name in sys.modules:
                try:
                    patch(sys.modules[name])
                except Exception:
                    pass
        if all(name in sys.modules for name in _PATCHERS):
            return
        if not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())
    except Exception:
        pass
