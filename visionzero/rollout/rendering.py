"""The one Jinja environment for the configuration files the local canary writes (nginx,
Prometheus): strict about missing values, whitespace as in the templates."""

from __future__ import annotations

import jinja2

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("visionzero.rollout"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)
