"""`prometheus` config, as Kong 3.x's schema.lua: each family of metrics is switched on by
its flag (all false by default, as in Kong): status_code_metrics, latency_metrics,
bandwidth_metrics, upstream_health_metrics; per_consumer and ai_metrics are not supported."""
from __future__ import annotations

from typing import Annotated

from ..base import PluginConfig, kong_default_only

NAME = "prometheus"


class Config(PluginConfig):
    per_consumer: Annotated[bool, kong_default_only(False, "per-consumer metrics are not supported")] = False
    status_code_metrics: bool = False
    latency_metrics: bool = False
    bandwidth_metrics: bool = False
    upstream_health_metrics: bool = False
    ai_metrics: Annotated[bool, kong_default_only(False, "AI metrics are not supported")] = False
