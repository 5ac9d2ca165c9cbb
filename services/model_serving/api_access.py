"""What model-serving's admin routers share: a role gate and the registry's database being reached.

The registry, datasets, training jobs and shadow mode all live in model-serving's database; until it
has been reached (`RegistryUnavailable` from their `current()`), each answers 503 with Retry-After.
Other failures are not hidden behind a 503: they are bugs and answer 500."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fastapi import Depends

from services.common.auth import Principal, TokenVerifier
from services.common.errors import ProblemError

from .resolved import RegistryUnavailable

T = TypeVar("T")


def role_gate(verifier: TokenVerifier, roles: Iterable[str], refusal: str) -> Any:
    """A FastAPI dependency: the caller's principal when it holds one of `roles`, else 403 `refusal`."""
    allowed = frozenset(roles)

    async def gate(principal: Principal = Depends(verifier)) -> Principal:
        if not allowed & set(principal.roles):
            raise ProblemError(403, refusal)
        return principal

    return Depends(gate)


def reached(current: Callable[[], T]) -> T:
    """`current()`, or 503 registry-unavailable while model-serving's database has not been reached."""
    try:
        return current()
    except RegistryUnavailable as exc:
        raise ProblemError(503, str(exc), slug="registry-unavailable", title="Model registry unavailable",
                           headers={"Retry-After": "5"}) from None
