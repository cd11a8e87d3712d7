"""The quick-start demo: the controller, a simulated factory and engine, one OPTIMIZE, one RETRAIN.

Role: a newcomer's first run (``just run``). Needs a broker address in
``KAFKA_BOOTSTRAP_SERVERS`` (the Justfile recipe starts a local one). Starts the
controller as ``python -m bytewax.run`` with recovery on (``dataflow.sim.process``),
answers its commands with the factory stand-in (a surface with a known optimum),
follows its pause/play with the engine stand-in, prints live progress and a summary, and
writes the trace (JSON and CSV) and a convergence plot (PNG) to an output folder.
Ctrl-C, SIGTERM, SIGHUP or any failure stops everything it started.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, Producer
from confluent_kafka.cimpl import TopicPartition

from dataflow.adapters.clock import now_ms
from dataflow.adapters.config import TOPIC_VARIABLES
from dataflow.adapters.wire import ENCODINGS, Codec
from dataflow.domain import dialects
from dataflow.domain import messages as msg
from dataflow.sim.engine import EngineSimulator
from dataflow.sim.factory import Behaviour, FactorySimulator
from dataflow.sim.process import ControllerProcess, interrupts_as_keyboard_interrupt
from dataflow.sim.runner import answering, client, messages, serve
from dataflow.sim.surfaces import SYNTHETIC
from dataflow.tools import inspection
from dataflow.tools.inspection import SessionView


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dataflow.sim.demo", description=__doc__)
    parser.add_argument("--dialect", choices=dialects.DIALECTS, default="seed")
    parser.add_argument("--encoding", choices=ENCODINGS, default="json",
                        help="json, or avro (needs --dialect rtcef)")  # fmt: skip
    parser.add_argument("--budget", type=int, default=None, help="opt_step commands per round")
    parser.add_argument("--surface", choices=sorted(SYNTHETIC), default="bowl")
    parser.add_argument("--latency", type=float, default=0.05, help="factory seconds per command")
    parser.add_argument("--output", type=Path, default=Path("demo-output"))
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this long")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve the controller's /metrics on this port (0: off)",
    )
    parser.add_argument(
        "--hold", action="store_true", help="after the rounds, keep everything running until Ctrl-C"
    )
    return parser.parse_args(argv)


#: The log events that end a round.
ENDED = ("round_completed", "round_aborted")


def _ended(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") in ENDED]


def progress(events: list[dict[str, Any]], budget: int) -> list[str]:
    """The demo's progress lines for the controller's log events so far, in their order.

    A line per round start, per OPTIMIZE score (steps done, best so far) and per
    round end; events only ever add lines, so each line is printed once.
    """
    lines = ["waiting for the controller..."]
    kinds: dict[int, str] = {}
    scores: dict[int, list[float]] = {}
    for event in events:
        name, number = event.get("event"), event.get("round", 0)
        if name == "round_started":
            kind = kinds[number] = event.get("detail", "?")
            scores[number] = []
            started = f"step 0/{budget}  best f_val -" if kind == "OPTIMIZE" else "training..."
            lines.append(f"round {number} ({kind}) {started}")
        elif name == "score" and number in scores:
            scores[number].append(event["value"])
            lines.append(f"round {number} ({kinds[number]}) step {len(scores[number])}/{budget}"
                         f"  best f_val {min(scores[number]):.4f}")  # fmt: skip
        elif name in ENDED:
            how = str(name).removeprefix("round_")
            lines.append(f"round {number} ({kinds.get(number, '?')}) {how}: "
                         f"model {event.get('detail')}")  # fmt: skip
    return lines


def settled(
    events: list[dict[str, Any]], engine: EngineSimulator, snapshot: SessionView | None
) -> bool:
    """Whether the last round ended, the engine plays what it left, and a snapshot holds it.

    Either way it ended: completed, the engine plays its model (the event's
    detail); aborted, the model played before it (the detail is the reason). The
    newest ``snapshot`` must be of the session after that round (IDLE, its number).
    """
    ended = _ended(events)
    if not ended or snapshot is None:
        return False
    last = ended[-1]
    model = str(snapshot.model_id)
    if last.get("event") == "round_completed" and model != last.get("detail"):
        return False  # the snapshot is older than the round's end
    after = snapshot.round == last.get("round") and snapshot.phase == "IDLE"
    return after and not engine.paused and str(engine.model_id) == model


class Demo:
    """Everything the demo started, so that it can all be stopped."""

    def __init__(self, args: argparse.Namespace, bootstrap: str) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
        self.folder = args.output / self.run_id
        self.folder.mkdir(parents=True, exist_ok=True)
        dialect = dialects.get(args.dialect)
        self.topics = {TOPIC_VARIABLES[role]: f"demo-{self.run_id}-{name}"
                       for role, name in dialect.topics.items()}  # fmt: skip
        self.topics["DEAD_LETTER_TOPIC"] = f"demo-{self.run_id}-dead_letters"
        self.profile = dialect.profile
        if args.budget:
            self.profile = msgspec.structs.replace(self.profile, budget=args.budget)  # fmt: skip
        self.stop = threading.Event()
        #: How many progress lines were printed (kept across waits: each is printed once).
        self.shown = 0
        self.codec = Codec(args.dialect, args.encoding)
        self.engine = EngineSimulator(codec=self.codec)
        self.threads: list[threading.Thread] = []
        self.controller: ControllerProcess | None = None
        self.log_path = self.folder / "controller.log"

    # ------------------------------------------------------------------ processes

    def start_controller(self) -> None:
        """Start the controller process (recovery on), logging JSON lines to a file."""
        env = {**self.topics, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
               "CONTROLLER_DIALECT": self.args.dialect, "WIRE_ENCODING": self.args.encoding,
               "TICK_INTERVAL_S": "1",
               "OPTIMISER_BUDGET": str(self.profile.budget), "REPORT_TIMEOUT_S": "30",
               "LOG_FORMAT": "json"}  # fmt: skip
        if self.args.metrics_port:
            env.update(BYTEWAX_DATAFLOW_API_ENABLED="1",
                       BYTEWAX_DATAFLOW_API_PORT=str(self.args.metrics_port),
                       BYTEWAX_DATAFLOW_API_CACHE_PATH=str(self.folder))  # fmt: skip
        self.controller = ControllerProcess(self.folder / "recovery", env, log=self.log_path)
        self.controller.start()
        # It reads from its topics' end as it found it (INPUT_START): instructions go after.
        self.controller.wait_ready(self.args.timeout)

    def start_factory(self) -> FactorySimulator:
        """Answer the controller's commands from a thread."""
        surface = SYNTHETIC[self.args.surface](self.profile)
        simulator = FactorySimulator(self.args.dialect, self.profile, surface, Behaviour(),
                                     encoding=self.args.encoding)  # fmt: skip
        handle = answering(simulator, self.topics["REPORT_TOPIC"])
        self._thread(serve, self.bootstrap, self.topics["COMMAND_TOPIC"], handle, self.stop,
                     from_start=True, delay_s=self.args.latency)  # fmt: skip
        return simulator

    def start_engine(self) -> None:
        """Follow the sync topic with the engine stand-in from a thread."""

        def follow() -> None:
            consumer = Consumer(client({"bootstrap.servers": self.bootstrap,  # as engines read
                                        "group.id": "demo-engine",
                                        "isolation.level": "read_uncommitted"}))  # fmt: skip
            consumer.assign([TopicPartition(self.topics["SYNC_TOPIC"], 0, 0)])
            for message in messages(consumer, self.stop.is_set, poll_s=0.2, strict=False):
                self.engine.follow(message, now_ms())
            consumer.close()

        self._thread(follow)

    def _thread(self, target: Any, *args: Any, **kwargs: Any) -> None:
        thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
        thread.start()
        self.threads.append(thread)

    def send(self, kind: msg.InstructionKind, ident: int) -> None:
        """Send an instruction as the Observer would."""
        instruction = msg.Instruction(kind, now_ms(), ident)
        producer = Producer(client({"bootstrap.servers": self.bootstrap}))
        key, value = self.codec.encode_instruction(instruction)
        producer.produce(self.topics["INSTRUCTION_TOPIC"], value, key)
        producer.flush(10)

    def run(self, began: float) -> FactorySimulator:
        """Start everything, run an OPTIMIZE and a RETRAIN round, wait until it settled."""
        simulator = self.start_factory()
        self.start_engine()
        self.start_controller()
        self.send(msg.InstructionKind.OPTIMIZE, 0)
        self.wait_for_rounds(1, began)
        self.send(msg.InstructionKind.RETRAIN, 1)
        self.wait_for_rounds(2, began)
        self.wait_until_settled(began)  # the engine read the last play; a snapshot holds it
        if self.args.hold:
            self.hold()
        return simulator

    def hold(self) -> None:
        """Keep the controller and the stand-ins running until Ctrl-C (or SIGTERM)."""
        print("\ndemo: holding; Ctrl-C stops everything and writes the summary")
        try:
            while self.controller and self.controller.running():
                time.sleep(1)
        except KeyboardInterrupt:
            return
        raise RuntimeError(f"the controller exited; see {self.log_path}")

    def shutdown(self) -> None:
        """Stop the controller (Ctrl-C, then kill) and the stand-in threads."""
        self.stop.set()
        if self.controller:
            self.controller.stop()
        for thread in self.threads:
            thread.join(10)

    # ------------------------------------------------------------------ progress

    def events(self) -> list[dict[str, Any]]:
        """The controller's structured log lines so far."""
        return self.controller.log_lines() if self.controller else []

    def wait_for_rounds(self, count: int, began: float) -> None:
        """Print progress until ``count`` rounds ended."""
        self._wait(lambda events: len(_ended(events)) >= count, began, f"{count} round(s)")

    def wait_until_settled(self, began: float) -> None:
        """Wait until the engine plays what the last round left and a snapshot holds it."""
        self._wait(lambda events: settled(events, self.engine, self.snapshot()), began,
                   "the last play and its snapshot")  # fmt: skip

    def snapshot(self) -> SessionView | None:
        """The session in the recovery directory's newest snapshot (none yet: None)."""
        if self.controller is None:
            return None
        try:
            return max(inspection.sessions(self.controller.recovery),
                       key=lambda s: (s.round, s.epoch), default=None)  # fmt: skip
        except sqlite3.Error:
            return None  # being written: the next look will do

    def _wait(self, done: Callable[[list[dict[str, Any]]], bool], began: float, what: str) -> None:
        """Print the progress lines of new events until ``done(events)``; raise on a failure."""
        while True:
            if self.controller and not self.controller.running():
                raise RuntimeError(f"controller exited ({self.controller.returncode}); "
                                   f"see {self.log_path}")  # fmt: skip
            if time.monotonic() - began > self.args.timeout:
                raise TimeoutError(f"{what} not reached after {self.args.timeout:g}s")
            events = self.events()
            lines = progress(events, self.profile.budget)
            for line in lines[self.shown :]:
                print(f"[{time.monotonic() - began:5.1f}s] {line}", flush=True)
            self.shown = len(lines)
            if done(events):
                return
            time.sleep(0.3)

    # ------------------------------------------------------------------ results

    def write_results(self, simulator: FactorySimulator) -> dict[str, Any]:
        """Write the trace and plot; return the summary."""
        events = self.events()
        trace = [{"round": e["round"], "step": e["step"], "f_val": e["value"]}
                 for e in events if e.get("event") == "score"]  # fmt: skip
        (self.folder / "trace.json").write_text(json.dumps(trace, indent=1))
        with (self.folder / "trace.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["round", "step", "f_val"])
            writer.writeheader()
            writer.writerows(trace)
        plot = self._plot(trace)
        dead = self._count(self.topics["DEAD_LETTER_TOPIC"])
        return {
            "rounds_completed": sum(e.get("event") == "round_completed" for e in events),
            "rounds_aborted": sum(e.get("event") == "round_aborted" for e in events),
            "steps": len(trace),
            "best_f_val": min((t["f_val"] for t in trace), default=None),
            "surface_optimum": -1.0,
            "engine_model": self.engine.model_id,
            "engine_paused": self.engine.paused,
            "engine_complaints": self.engine.complaints,
            "dead_letters": dead,
            "trace": str(self.folder / "trace.csv"),
            "plot": str(plot) if plot else None,
            "controller_log": str(self.log_path),
        }

    def _plot(self, trace: list[dict[str, Any]]) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("(matplotlib not installed: no plot)", file=sys.stderr)
            return None
        figure, axes = plt.subplots(figsize=(7, 4))
        values = [t["f_val"] for t in trace]
        best = [min(values[: i + 1]) for i in range(len(values))]
        axes.plot(range(1, len(values) + 1), values, "o", alpha=0.6, label="f_val of each step")
        axes.plot(range(1, len(values) + 1), best, "-", label="best so far")
        axes.axhline(-1.0, color="grey", linestyle=":", label="surface optimum")
        axes.set_xlabel("opt_step")
        axes.set_ylabel("f_val (lower is better)")
        axes.set_title(f"Controller convergence ({self.args.dialect} dialect, {self.args.surface})")
        axes.legend()
        path = self.folder / "convergence.png"
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return Path(path)

    def _count(self, topic: str) -> int:
        consumer = Consumer(client({"bootstrap.servers": self.bootstrap, "group.id": "demo-count",
                                    "enable.partition.eof": True,
                                    "isolation.level": "read_uncommitted"}))  # fmt: skip
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 5
        read = messages(consumer, lambda: time.monotonic() >= deadline, poll_s=0.2,
                        until_eof=True, strict=False)  # fmt: skip
        count = sum(1 for _ in read)
        consumer.close()
        return count


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit 0 when both rounds ended with the engine playing."""
    args = _args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("demo: set KAFKA_BOOTSTRAP_SERVERS (or use `just run`, which starts a broker)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.encoding not in dialects.get(args.dialect).encodings:
        print(f"demo: the {args.dialect} dialect is not spoken in {args.encoding}", file=sys.stderr)
        return 2
    demo = Demo(args, bootstrap)
    print(f"demo: output in {demo.folder}; broker {bootstrap}; dialect {args.dialect}")
    began = time.monotonic()
    try:
        with interrupts_as_keyboard_interrupt():  # SIGTERM, SIGHUP: as Ctrl-C
            try:
                simulator = demo.run(began)
            except KeyboardInterrupt:
                print("\ndemo: interrupted, stopping everything", file=sys.stderr)
                raise
            finally:
                demo.shutdown()  # whatever ended it: the controller is in a session of its own
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, TimeoutError) as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    summary = demo.write_results(simulator)
    summary["elapsed_s"] = round(time.monotonic() - began, 1)
    (demo.folder / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\nsummary:")
    for key, value in summary.items():
        print(f"  {key:18} {value}")
    ok = summary["rounds_completed"] == 2 and not summary["engine_paused"]
    return 0 if ok and not summary["engine_complaints"] else 1


if __name__ == "__main__":
    sys.exit(main())
