"""A ModelFactory stand-in that answers commands exactly as the real factories do.

Pure core (``FactorySimulator.respond``: one command in, (key, report) pairs out)
plus a Kafka loop (``serve``). Faithful to both dialects: no report for
``opt_initialise``; ``f_val`` inside the ``metrics`` JSON text; ``params_dict``
keeps the ``{"params": ...}`` wrapper for rtcef train reports; a global model id
counter; seed adds ``status``, ``model_path`` and ``creation_method``. Optional
misbehaviour for tests and demos: errors, silence and duplicate replies.

Like the real factories it acts on every command it reads, copies too, and reads
no header: a repeated ``train`` builds another model, a repeated ``opt_step`` is
another step of the optimisation (its ``best_i`` then counts it), and an
``opt_finalise`` after its optimisation ended finds none: the seed's factory
answers "No optimization session active", the original RTCEF factory raises in
its main loop and never answers anything again (``dead``). It counts the
deliveries of each command id (``duplicates``): a copy is the controller's bug.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from dataflow.adapters.wire import Codec, Encoding
from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.domain.dialects import PROFILES
from dataflow.domain.optimizer import Profile
from dataflow.sim.runner import add_wire_arguments, answering, serve
from dataflow.sim.services import SERVICES
from dataflow.sim.surfaces import SYNTHETIC, Surface, recorded

#: A report as it goes on the wire: its key (``None``: unkeyed) and value.
Reply = tuple[bytes | None, bytes]


@dataclass
class Behaviour:
    """How the simulated factory misbehaves (probabilities per command)."""

    error_rate: float = 0.0
    silence_rate: float = 0.0
    duplicate_rate: float = 0.0
    #: Command ids (wire form) never to answer, whatever the rates.
    silent_ids: frozenset[int | str] = frozenset()
    #: Command ids to answer with an error report the first time they arrive.
    failing_once: frozenset[int | str] = frozenset()


@dataclass
class FactorySimulator:
    """Answers factory commands; remembers each optimisation's steps for its finalise."""

    dialect: str
    profile: Profile
    surface: Surface
    behaviour: Behaviour = field(default_factory=Behaviour)
    seed: int = 0
    #: Wire encoding of the reports (JSON, or Avro for the rtcef dialect).
    encoding: Encoding = "json"
    next_model: int = 0
    #: The optimisation in progress of each model served (the session key, in multi-model
    #: mode: one real factory per model): its steps, for the finalise.
    steps: dict[tuple[str | None, int], list[tuple[msg.Params, int]]] = field(default_factory=dict)
    failed: set[int | str] = field(default_factory=set)
    #: Deliveries of each command id (a second one is a copy the factory acted on again).
    deliveries: dict[int | str, int] = field(default_factory=dict)
    #: Why its loop died (the original factory, on an ``opt_finalise`` without a round).
    dead: str | None = None

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)  # noqa: S311 - simulation, not security
        self.codec = Codec(self.dialect, self.encoding)
        self._services = SERVICES[dialects.get(self.dialect).name]

    @property
    def duplicates(self) -> dict[int | str, int]:
        """Command ids delivered more than once, with how many deliveries."""
        return {cid: n for cid, n in self.deliveries.items() if n > 1}

    def respond(self, command: msg.FactoryCommand, model: str | None = None) -> list[Reply]:
        """The reports for ``command`` (none, one, or a duplicated one), as (key, value).

        ``model``: which model's factory answers (the session key of multi-model mode).
        """
        self.deliveries[command.id] = self.deliveries.get(command.id, 0) + 1
        b = self.behaviour
        if self.dead is not None:
            return []
        if command.id in b.silent_ids or self._random.random() < b.silence_rate:
            return []
        if command.type == msg.CommandType.OPT_INITIALISE:
            self.steps[model, command.optimisation_id] = []
            return []
        if (command.id in b.failing_once and command.id not in self.failed) or (
            self._random.random() < b.error_rate
        ):
            self.failed.add(command.id)
            error = self._error(command, "simulated factory failure")
            return [error] if error else []
        report = self._report(command, (model, command.optimisation_id))
        if report is None:
            return []
        copies = 2 if self._random.random() < b.duplicate_rate else 1
        return [report] * copies

    def _report(
        self, command: msg.FactoryCommand, optimisation: tuple[str | None, int]
    ) -> Reply | None:
        body = json.loads(command.params)["params"]
        model = self.next_model
        self.next_model += 1
        if command.type == msg.CommandType.TRAIN:
            params_dict = self._services.train_params_dict(command)
            return self._encode(command, model, params_dict, "", "retrain")
        if command.type == msg.CommandType.OPT_STEP:
            if optimisation not in self.steps:  # finalised already, or a copy
                return self._no_optimisation(command)
            named = tuple(zip(self.profile.names, body, strict=True))
            f_val = self.surface(named)
            self.steps[optimisation].append((named, model))
            metrics = json.dumps({"mcc": -f_val, "f_val": f_val})
            return self._encode(command, model, json.dumps(dict(named)), metrics, None)
        # opt_finalise: the factory builds the best step's model anew, under a new id
        # (as in the recordings: steps 1..15, finalise 16), and ends the optimisation.
        steps = self.steps.pop(optimisation, None)
        if steps is None:  # finalised already (a copy), or never initialised
            return self._no_optimisation(command)
        if not 0 <= command.best_i < len(steps):
            self.next_model -= 1
            return self._error(command, f"no step {command.best_i} in this optimisation")
        named, _ = steps[command.best_i]
        return self._encode(command, model, json.dumps(dict(named)), "", "optimisation")

    def _no_optimisation(self, command: msg.FactoryCommand) -> Reply | None:
        """A step or finalise with no optimisation in progress, as each real factory takes it."""
        self.next_model -= 1
        if self._services.error_report(command, "") is None:  # the original factory: it raises
            self.dead = f"{command.type} {command.id!r} without an optimisation in progress"
            return None
        return self._error(command, "No optimization session active")

    def _encode(
        self,
        command: msg.FactoryCommand,
        model: int,
        params_dict: str,
        metrics: str,
        method: str | None,
    ) -> Reply:
        report = self._services.success_report(command, model, params_dict, metrics, method)
        return self.codec.encode_report(report)

    def _error(self, command: msg.FactoryCommand, reason: str) -> Reply | None:
        report = self._services.error_report(command, reason)  # None: a silent factory
        return None if report is None else self.codec.encode_report(report)


def main(argv: list[str] | None = None) -> int:
    """Serve as a ModelFactory until interrupted (Ctrl-C)."""
    parser = argparse.ArgumentParser(
        prog="python -m dataflow.sim.factory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_wire_arguments(parser, "commands and reports")
    parser.add_argument("--commands-topic", default="factory_commands")
    parser.add_argument("--reports-topic", default="factory_reports")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="search space the opt_step lists follow (default: the dialect's)",
    )
    parser.add_argument(
        "--surface",
        choices=[*sorted(SYNTHETIC), "recorded"],
        default="bowl",
        help="score of a candidate: a synthetic function with optimum -1, or "
        "the recorded RTCEF reports (rtcef profile, needs --recordings)",
    )
    parser.add_argument(
        "--recordings",
        type=Path,
        default=None,
        help="folder of month_*/ recordings for --surface recorded",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per command")
    parser.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        help="probability of an error report (seed; rtcef has none: silence)",
    )
    parser.add_argument(
        "--silence-rate", type=float, default=0.0, help="probability of never answering a command"
    )
    parser.add_argument(
        "--duplicate-rate", type=float, default=0.0, help="probability of sending a report twice"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the misbehaviour")
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="answer commands already on the topic (default: only new ones)",
    )
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile] if args.profile else dialects.get(args.dialect).profile
    if args.surface == "recorded":
        if args.recordings is None:
            parser.error("--surface recorded needs --recordings DIR")
        surface = recorded(profile, args.recordings)
    else:
        surface = SYNTHETIC[args.surface](profile)
    behaviour = Behaviour(args.error_rate, args.silence_rate, args.duplicate_rate)
    simulator = FactorySimulator(args.dialect, profile, surface, behaviour, seed=args.seed,
                                 encoding=args.encoding)  # fmt: skip

    def answered(command: msg.FactoryCommand, reports: int) -> None:
        print(f"factory: {command.type} {command.id!r} -> {reports} report(s)", flush=True)

    handle = answering(
        simulator,
        args.reports_topic,
        rejected=lambda rejection: print(f"factory: ignoring {rejection.reason}", file=sys.stderr),
        answered=answered,
    )
    stop = threading.Event()
    try:
        serve(
            args.bootstrap,
            args.commands_topic,
            handle,
            stop,
            from_start=args.from_start,
            delay_s=args.latency,
        )
    except KeyboardInterrupt:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
