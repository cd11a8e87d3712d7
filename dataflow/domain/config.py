"""What the controller needs to know that no message tells it."""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import msgspec

from dataflow.domain import dialects
from dataflow.domain.errors import ConfigError
from dataflow.domain.ids import CommandId
from dataflow.domain.messages import Params
from dataflow.domain.optimizer import Observation, Profile
from dataflow.domain.strategy import STRATEGIES

DEFAULT_KEY: Final = "controller"
NO_MODEL: Final = -1
#: When an OPTIMIZE round pauses the engine: for the whole round (as both originals), or
#: only while its finalised model is built (the engine forecasts on during the steps).
PauseEngine: TypeAlias = Literal["round", "finalise"]
PAUSE_ENGINE: Final[tuple[PauseEngine, ...]] = ("round", "finalise")


class Baseline(msgspec.Struct, frozen=True):
    """Where a new session's counters start: after everything already on the output topics.

    A controller started without recovery state on topics that earlier controllers
    used (a lost volume, a second deployment) continues their numbering, so that no
    new command reuses an id an old report answers. ``dataflow.adapters.origin``
    reads it off the topics once, when the recovery directory is first used.
    """

    next_command: int = 0
    trains: int = 0
    optimisations: int = 0
    rounds: int = 0


class MachineConfig(msgspec.Struct, frozen=True):
    """The controller's own settings, as the domain sees them (validated by ``validate``)."""

    #: A name in ``dataflow.domain.dialects.REGISTRY``: how command ids are written.
    dialect: str
    profile: Profile
    #: The current best parameters before any round or UPDATE_PARAMS (wire order kept).
    initial_params: Params
    #: Session keys. One key: everything is one session. Several: one session per
    #: ``model_id``, and command ids encode the key's index (``number * len(keys) + index``).
    keys: tuple[str, ...] = (DEFAULT_KEY,)
    report_timeout_ms: int = 600_000
    max_retries: int = 2
    #: Observations from an offline optimisation; the newest ``profile.keep`` seed round 0.
    warm_start: tuple[Observation, ...] = ()
    initial_model_id: int | str = NO_MODEL
    #: An OPTIMIZE or RETRAIN is coalesced (dead-lettered, no round) when an instruction of
    #: at least its rank was admitted less than this before it, in the instructions' own
    #: timestamp units. 0: only instructions no newer than that one are coalesced.
    instruction_min_gap: int = 0
    #: Admitted instructions waiting for their round; beyond, dead-lettered (a safety valve:
    #: how full the queue is depends on timing, see ``dataflow.domain.machine``).
    max_queued: int = 1000
    #: Reports for commands not sent yet (replay) held at most; also how far ahead they may be.
    max_held: int = 1024
    #: Where new sessions' counters start (``Baseline``).
    baseline: Baseline = Baseline()
    #: When an OPTIMIZE round pauses the engine (``PauseEngine``); RETRAIN: always at once.
    pause_engine: PauseEngine = "round"
    #: An instruction stamped more than this past the newest admitted OPTIMIZE or RETRAIN,
    #: in the instructions' own timestamp units, is implausible (refused). 0: no limit. The
    #: default is two years in milliseconds, twice the largest gap of the recorded runs.
    instruction_max_jump: int = 63_072_000_000
    #: An instruction stamped later than this is implausible (refused); None: the dialect's
    #: ``latest_timestamp`` (2100 in milliseconds).
    instruction_max_timestamp: int | None = None
    #: How much earlier (ms) than its command's cause a report or deadline marker may be
    #: stamped in its topic before it is refused as forged (``answers.forged``): the
    #: producers' clocks may disagree by this much (none at all with ``LogAppendTime``).
    report_clock_skew_ms: int = 1000

    def validate(self) -> None:
        """Raise ``ConfigError`` listing every inconsistency, the profile's first."""
        self.profile.validate()
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every inconsistency of these settings but the profile's (``Profile.validate``)."""
        problems = []
        if self.dialect not in dialects.REGISTRY:
            problems.append(f"dialect {self.dialect!r} is not one of {list(dialects.REGISTRY)}")
        if self.profile.strategy not in STRATEGIES:
            problems.append(f"optimiser strategy {self.profile.strategy!r} is not one of "
                            f"{list(STRATEGIES)}")  # fmt: skip
        if not self.keys or len(set(self.keys)) != len(self.keys):
            problems.append(f"keys must be distinct and non-empty, got {self.keys}")
        if sorted(n for n, _ in self.initial_params) != sorted(self.profile.names):
            names = [n for n, _ in self.initial_params]
            problems.append(f"initial params {names} must name exactly {list(self.profile.names)}")
        if self.report_timeout_ms <= 0 or self.max_retries < 0:
            problems.append("report_timeout_ms must be > 0 and max_retries >= 0")
        if self.instruction_min_gap < 0 or self.max_queued < 1 or self.max_held < 1:
            problems.append("instruction_min_gap must be >= 0, max_queued and max_held >= 1")
        if self.instruction_max_jump < 0 or self.report_clock_skew_ms < 0:
            problems.append("instruction_max_jump and report_clock_skew_ms must be >= 0")
        if self.instruction_max_timestamp is not None and self.instruction_max_timestamp < 0:
            problems.append("instruction_max_timestamp must be >= 0")
        if self.pause_engine not in PAUSE_ENGINE:
            problems.append(f"pause_engine {self.pause_engine!r} is not one of {PAUSE_ENGINE}")
        if min(msgspec.structs.astuple(self.baseline)) < 0:
            problems.append(f"baseline counters must be >= 0, got {self.baseline}")
        return problems

    def longest_round_ms(self) -> int:
        """The longest a round can keep the engine paused (the controller's hops aside).

        Every awaited command of an OPTIMIZE round (its steps and the finalise) waits out
        its report timeout on each of its attempts.
        """
        awaited = self.profile.budget + 1
        return awaited * self.report_timeout_ms * (self.max_retries + 1)

    def latest_timestamp(self) -> int:
        """The latest plausible instruction timestamp: the setting's, or the dialect's."""
        if self.instruction_max_timestamp is not None:
            return self.instruction_max_timestamp
        return dialects.get(self.dialect).latest_timestamp

    def command_id(self, key: str, counter: int) -> int | str:
        """The wire id of session ``key``'s command number ``counter``."""
        return CommandId(key, counter).wire(self.keys, dialects.get(self.dialect).command_id)

    def read_command_id(self, wire: int | str) -> CommandId | None:
        """The session and counter a wire id names (None: never issued by any session)."""
        return CommandId.read(wire, self.keys)
