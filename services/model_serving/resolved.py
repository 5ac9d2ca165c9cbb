"""Which artifact serves a model reference: the resolver contract shared by the runner and the registry.

A resolver is `async (ref: str | None) -> ResolvedModel`; `None` means the default model
(the "production" alias). References name a model version as "name:version", "name@alias",
a bare alias or a bare version number. The registry resolves them in the database; without
a registry `StaticResolver` serves one artifact directory.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from .models.manifest import MANIFEST_NAME, ModelIntegrityError

DEFAULT_ALIAS = "production"


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    directory: Path
    manifest_sha256: str   # what the artifact's manifest.json must hash to

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)


class UnknownModel(LookupError):
    """No model version answers to the reference."""


class RegistryUnavailable(Exception):
    """The registry's database has not been reached yet; model-serving keeps trying.

    Its message is shown to callers: it must not carry connection details."""


Resolver = Callable[[str | None], Awaitable[ResolvedModel]]


def parse_model_ref(ref: str | None) -> tuple[str | None, str]:
    """(model name or None, version number or alias). None/"" means the default alias.

    "doctag-tagger:3" -> ("doctag-tagger", "3"); "doctag-tagger@candidate" -> ("doctag-tagger", "candidate");
    "3" -> (None, "3"); "candidate" -> (None, "candidate").
    """
    ref = (ref or "").strip()
    if not ref:
        return None, DEFAULT_ALIAS
    for separator in (":", "@"):
        if separator in ref:
            name, _, selector = ref.partition(separator)
            if not name or not selector:
                raise UnknownModel(f"model reference {ref!r} is not 'name:version' or 'name@alias'")
            return name, selector
    return None, ref


class StaticResolver:
    """Serves the artifact in `directory` (resolved anew each call, so a symlink can be repointed).

    It knows one version: references to its name, its version or the default alias resolve
    to it, anything else is unknown.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    async def __call__(self, ref: str | None) -> ResolvedModel:
        resolved = await asyncio.to_thread(self._read)
        name, selector = parse_model_ref(ref)
        if name not in (None, resolved.name) or selector not in (DEFAULT_ALIAS, resolved.version, resolved.name):
            raise UnknownModel(f"model {ref!r} is not served here (serving {resolved.name}:{resolved.version})")
        return resolved

    def _read(self) -> ResolvedModel:
        directory = self.directory.resolve()
        path = directory / MANIFEST_NAME
        try:
            raw = path.read_bytes()
            manifest = json.loads(raw.decode("utf-8"))
            return ResolvedModel(str(manifest["name"]), str(manifest["version"]), directory,
                                 hashlib.sha256(raw).hexdigest())
        except FileNotFoundError:
            raise ModelIntegrityError(f"{path} is missing: not a model artifact") from None
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"{path} is not a valid manifest: {exc}") from None
