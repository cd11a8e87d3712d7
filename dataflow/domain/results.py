"""What every handler returns, and the parts of a session the handlers read.

Every handler of the table (``dataflow.domain.table``) takes the session, the
classified input its row dispatches and the config, and returns the session and
the effects, in the order they must happen. None performs I/O or reads a clock:
time comes in the events. None sets the phase: the table does.
"""

from __future__ import annotations

from typing import TypeAlias

from dataflow.domain.effects import Effect
from dataflow.domain.errors import IllegalTransitionError
from dataflow.domain.optimizer import OptimiserSnapshot
from dataflow.domain.state import Round, Session

Result: TypeAlias = tuple[Session, list[Effect]]


def round_of(state: Session) -> Round:
    """The round in progress (a session in a round's phase always has one)."""
    if state.round is None:
        raise IllegalTransitionError(f"session {state.key!r} in {state.phase} has no round")
    return state.round


def optimiser_of(round_: Round) -> OptimiserSnapshot:
    """An OPTIMIZE round's optimiser snapshot."""
    if round_.optimiser is None:
        raise IllegalTransitionError(f"round {round_.number} ({round_.kind}) has no optimiser")
    return round_.optimiser


def step_of(state: Session) -> int | None:
    """The index of the round's next (or outstanding) step; None outside an OPTIMIZE round."""
    if state.round is None or state.round.optimiser is None:
        return None
    return len(state.round.optimiser.observations)
