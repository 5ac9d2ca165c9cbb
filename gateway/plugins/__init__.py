"""The plugins, found by folder: every `gateway/plugins/<folder>/` with a `schema.py`
(`NAME`, `Config`) and a `handler.py` (`Handler`) is a plugin. Adding one means adding
a folder; nothing else names the plugins.

`PLUGIN_CONFIGS` (name -> config schema) is what the config loader validates against;
`handler_classes()` imports the handlers, which the pipeline instantiates.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from .base import PluginConfig, PluginHandler

_FOLDER = Path(__file__).resolve().parent


def _plugin_folders() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(_FOLDER)])
                  if m.ispkg and (_FOLDER / m.name / "schema.py").exists())


def _load_schemas() -> tuple[dict[str, type[PluginConfig]], dict[str, str], frozenset[str]]:
    configs: dict[str, type[PluginConfig]] = {}
    folders: dict[str, str] = {}
    global_only: set[str] = set()
    for folder in _plugin_folders():
        module = importlib.import_module(f"{__name__}.{folder}.schema")
        name: str = module.NAME
        configs[name] = module.Config
        folders[name] = folder
        if getattr(module, "GLOBAL_ONLY", False):
            global_only.add(name)
    return configs, folders, frozenset(global_only)


PLUGIN_CONFIGS, _FOLDERS, GLOBAL_ONLY = _load_schemas()


def handler_classes() -> dict[str, type[PluginHandler[Any]]]:
    """Plugin name -> handler class (imported on first use: handlers need the router and proxy,
    which need the config schemas above)."""
    found: dict[str, type[PluginHandler[Any]]] = {}
    for name, folder in _FOLDERS.items():
        module = importlib.import_module(f"{__name__}.{folder}.handler")
        found[name] = module.Handler
    return found


__all__ = ["GLOBAL_ONLY", "PLUGIN_CONFIGS", "handler_classes"]
