"""The root of fieldgate's exception tree.

Each package (edge, cloud, sims) derives its own subtree from :class:`FieldgateError`; layers
translate foreign exceptions at their boundary with ``raise ... from err`` so that callers only
ever need to catch fieldgate's own types.
"""

from __future__ import annotations


class FieldgateError(Exception):
    """Base of every error fieldgate raises on purpose."""


class ConfigError(FieldgateError):
    """Configuration could not be loaded; the message names the key and the reason."""
