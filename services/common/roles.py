"""The roles a user can hold (in the JWT's `roles` claim and in identity.users.roles).

Kept apart from auth.py so that administration tools can name them without importing the web stack."""
from __future__ import annotations

ROLES = ("user", "tenant_admin", "platform_admin", "analyst")
# analyst: reads the audit data of every tenant, changes nothing.
