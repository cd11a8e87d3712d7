"""One root error for the domain, with precise leaves.

Bad *input* is never an exception here: decoders return a ``Rejection`` value.
These errors mean a caller broke a contract (a bug or a corrupt state).
"""

from __future__ import annotations


class DomainError(Exception):
    """Root of every error the pure core raises on purpose."""


class IllegalTransitionError(DomainError):
    """An event reached a phase that has no row for it in the transition table."""


class SnapshotError(DomainError):
    """An optimiser snapshot cannot be used (wrong version, inconsistent space or data)."""


class ConfigError(DomainError):
    """A domain configuration value is inconsistent (bad bounds, budget, parameter names)."""


class StateVersionError(DomainError):
    """A session state was written by a controller whose state version this one cannot read."""
