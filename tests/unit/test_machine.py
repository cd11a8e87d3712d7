"""The state machine, one transition-table row at a time, asserting whole states and effects."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from dataflow.domain import dialects, inputs, optimizer, strategy, table
from dataflow.domain import machine as m
from dataflow.domain.errors import IllegalTransitionError, StateVersionError
from dataflow.domain.messages import (
    FactoryCommand,
    Instruction,
    InstructionKind,
    SyncMessage,
    params_text,
)
from tests.support import SEED_PARAMS, instruction, report, seed_config

KEY = "controller"
CONFIG = seed_config()
OPTIMIZE, RETRAIN, UPDATE = (
    InstructionKind.OPTIMIZE,
    InstructionKind.RETRAIN,
    InstructionKind.UPDATE_PARAMS,
)
NULL = params_text(None, named=False)


def step(state: m.Session | None, event: m.Event, config: m.MachineConfig = CONFIG):
    return m.advance(state, event, key=KEY, config=config)


def idle(**changes: object) -> m.Session:
    return msgspec.structs.replace(m.new_session(KEY, CONFIG), **changes)


def pause(round_number: int, ts: int = 1000) -> m.SendSync:
    return m.SendSync(KEY, f"{KEY}/sync/{round_number}/pause", SyncMessage("pause", ts, -1))


def play(round_number: int, model_id: int | str, ts: int = 1000) -> m.SendSync:
    return m.SendSync(KEY, f"{KEY}/sync/{round_number}/play", SyncMessage("play", ts, model_id))


def send(command: FactoryCommand, attempt: int = 0) -> m.SendCommand:
    return m.SendCommand(KEY, f"{KEY}/cmd/{command.id}/{attempt}", command)


def train_command(number: int = 0, train_id: int = 0, params=SEED_PARAMS, ts: int = 1000):
    return FactoryCommand(train_id, -1, f"cmd-{number}", ts, "train",
                          params_text(params, named=True), -1)  # fmt: skip


def opt_command(number: int, kind: str, params: str = NULL, best_i: int = -1, opt_id: int = 0):
    return FactoryCommand(-1, opt_id, f"cmd-{number}", 1000, kind, params, best_i)


# --------------------------------------------------------------------------- fixtures as states

FIRST_POINT, FIRST_SNAPSHOT = strategy.propose(optimizer.start(CONFIG.profile, KEY, 0))
STEP_0 = opt_command(1, "opt_step", params_text(FIRST_POINT, named=False))
TRAIN_0 = train_command()

TRAINING = idle(
    phase=m.Phase.TRAINING, next_command=1, trains=1, rounds=1, last_admitted=1000,
    round=m.Round("train", 1, 1000, 0, -1, 0),
    outstanding=m.Outstanding(TRAIN_0, 0, 0, 1000),
)  # fmt: skip
WAITING = idle(
    phase=m.Phase.WAITING_FOR_REPORT, next_command=2, optimisations=1, rounds=1,
    last_admitted=1000, last_optimize=1000,
    round=m.Round("optimise", 1, 1000, -1, 0, 0, FIRST_SNAPSHOT),
    outstanding=m.Outstanding(STEP_0, 1, 0, 1000),
)  # fmt: skip
SECOND_POINT, SECOND_SNAPSHOT = strategy.propose(optimizer.learn(FIRST_SNAPSHOT, -0.5))
LAST_SNAPSHOT = optimizer.learn(SECOND_SNAPSHOT, -0.7)
FINALISE = opt_command(3, "opt_finalise", best_i=1)
FINALIZING = idle(
    phase=m.Phase.FINALIZING, next_command=4, optimisations=1, rounds=1,
    last_admitted=1000, last_optimize=1000,
    round=m.Round("optimise", 1, 1000, -1, 0, 0, LAST_SNAPSHOT),
    outstanding=m.Outstanding(FINALISE, 3, 0, 1000),
)  # fmt: skip


# --------------------------------------------------------------------------- the table itself


def test_the_table_has_a_row_for_every_input_class_in_every_phase_it_can_arise_in() -> None:
    idle, training, waiting, finalizing = table.RESTING
    rounds = {training, waiting, finalizing}
    anywhere = {inputs.Admitted, inputs.Refused, inputs.Early, inputs.Stray, inputs.Spent,
                inputs.Quiet}  # fmt: skip
    expected = {
        *((phase, cls) for phase in table.RESTING for cls in anywhere),
        *((phase, cls) for phase in rounds for cls in (inputs.Due, inputs.Resend, inputs.GiveUp)),
        (training, inputs.Built), (finalizing, inputs.Built),
        (waiting, inputs.Scored), (waiting, inputs.ScoredLast),
        (waiting, inputs.InitialiseRefused), (finalizing, inputs.InitialiseRefused),
    }  # fmt: skip

    assert set(table.TABLE) == expected
    assert set(table.STARTS) == set(InstructionKind)
    assert set(table.RESTING) == set(m.Phase)  # no phase is passed through without resting
    assert {row.to for (phase, _), row in table.TABLE.items() if phase is idle} == {idle}


def test_every_path_out_of_a_round_leads_to_idle_through_a_handler_that_plays() -> None:
    to_idle = {row.handler for (phase, _), row in table.TABLE.items()
               if phase is not m.Phase.IDLE and row.to is m.Phase.IDLE}  # fmt: skip
    assert {handler.__name__ for handler in to_idle} == {"complete", "abort_refused", "give_up"}


def test_a_handler_that_sets_the_phase_itself_is_an_illegal_transition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def wanders(state: m.Session, read: inputs.Quiet, config: m.MachineConfig) -> tuple:
        return msgspec.structs.replace(state, phase=m.Phase.FINALIZING), []

    rows = {**table.TABLE, (m.Phase.IDLE, inputs.Quiet): table.Row(wanders, m.Phase.IDLE)}
    monkeypatch.setattr(table, "TABLE", rows)

    with pytest.raises(IllegalTransitionError, match="wanders set the phase itself"):
        step(idle(), m.Tick(0))
    assert "IDLE --> IDLE : Quiet / wanders" in table.mermaid()  # the drawing is the dispatch


def test_an_input_with_no_row_in_its_phase_is_an_illegal_transition() -> None:
    # A TRAINING session whose outstanding command is a step: no sequence of events makes
    # one, and its report would be Scored, which has no row in TRAINING.
    broken = msgspec.structs.replace(WAITING, phase=m.Phase.TRAINING)
    with pytest.raises(IllegalTransitionError, match="no transition from TRAINING on Scored"):
        step(broken, report(STEP_0.id, f_val=-0.5))


def test_the_readme_draws_the_machine_from_the_table() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"```mermaid\n{table.mermaid()}```" in readme, "run: just diagram"


# --------------------------------------------------------------------------- IDLE


def test_idle_optimize_pauses_initialises_and_sends_the_first_proposal() -> None:
    state, effects = step(None, instruction(OPTIMIZE))

    assert state == WAITING
    assert effects == [
        m.Note(KEY, "round_started", 1, detail="OPTIMIZE"),
        pause(1),
        send(opt_command(0, "opt_initialise")),
        m.Note(KEY, "step", 1, step=0, detail=STEP_0.params),
        send(STEP_0),
    ]


def test_idle_retrain_pauses_and_trains_with_the_current_best_parameters() -> None:
    state, effects = step(None, instruction(RETRAIN))

    assert state == TRAINING
    assert effects == [m.Note(KEY, "round_started", 1, detail="RETRAIN"), pause(1), send(TRAIN_0)]


def test_idle_update_params_replaces_the_current_best_parameters() -> None:
    new = (("gamma", 0.002), ("pMin", 0.02))
    event = m.InstructionArrived(Instruction(UPDATE, 5, parameters=new), 0)

    state, effects = step(idle(), event)

    assert state == idle(best_params=new)
    assert effects == [m.Note(KEY, "params_updated", 0, detail=params_text(new, named=True))]


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ((("pMin", 0.02),), "parameters ['pMin'] must name exactly ['pMin', 'gamma']"),
        ((("pMin", 0.5), ("gamma", 0.001)), "parameter pMin=0.5 is outside [0.001, 0.1]"),
    ],
)
def test_update_params_with_wrong_names_or_values_is_rejected_and_changes_nothing(
    parameters: tuple[tuple[str, float], ...], reason: str
) -> None:
    event = m.InstructionArrived(Instruction(UPDATE, 5, parameters=parameters), 0)

    state, effects = step(idle(), event)

    assert state == idle()
    assert effects == [m.Reject(KEY, f"instruction: update_params {reason}")]


def test_idle_report_for_a_command_not_sent_yet_is_held_until_it_is() -> None:
    early = report("cmd-0", model_id=1)
    state, effects = step(idle(), early)

    assert state == idle(held=(early.report,))
    assert effects == [
        m.Note(KEY, "held", 0, detail="report 'cmd-0' held until its command is sent")
    ]


def test_a_held_report_answers_its_command_as_soon_as_the_command_is_sent() -> None:
    held, _ = step(None, report("cmd-0", model_id=7))

    state, effects = step(held, instruction(RETRAIN))

    assert state == idle(next_command=1, trains=1, rounds=1, model_id=7, last_admitted=1000)
    assert effects == [
        m.Note(KEY, "round_started", 1, detail="RETRAIN"), pause(1), send(TRAIN_0),
        m.Note(KEY, "round_completed", 1, detail="7"), play(1, 7),
    ]  # fmt: skip


def test_held_reports_feed_a_whole_round_in_their_own_order_and_duplicates_are_rejected() -> None:
    state = None
    for reply, fields in (("cmd-1", {"f_val": -0.5}), ("cmd-1", {"f_val": -0.9}),
                          ("cmd-2", {"f_val": -0.7}), ("cmd-3", {"model_id": 9})):  # fmt: skip
        state, _ = step(state, report(reply, **fields))

    state, effects = step(state, instruction(OPTIMIZE))

    assert state is not None
    assert (state.phase, state.model_id, state.held, state.next_command) == (m.Phase.IDLE, 9, (), 4)
    assert [e.command.type for e in effects if isinstance(e, m.SendCommand)] == [
        "opt_initialise", "opt_step", "opt_step", "opt_finalise"
    ]  # fmt: skip
    assert [e.reason for e in effects if isinstance(e, m.Reject)] == [
        "report 'cmd-1': duplicate (already answered; awaiting 'cmd-2')"
    ]
    assert effects[-1] == play(1, 9)


def test_a_report_too_far_ahead_to_hold_is_rejected() -> None:
    config = seed_config(max_held=2)
    state, effects = step(idle(), report("cmd-2", model_id=1), config)

    assert state == idle()
    reason = "report 'cmd-2': foreign reply_id (no such command was sent, nor within 2 of the next)"
    assert effects == [m.Reject(KEY, reason)]


def test_a_report_that_finds_the_hold_full_is_rejected() -> None:
    config = seed_config(max_held=1)
    state, _ = step(idle(), report("cmd-0", model_id=1), config)

    same, effects = step(state, report("cmd-0", model_id=2), config)

    assert same == state
    reason = "report 'cmd-0': foreign reply_id (no such command was sent; 1 held already)"
    assert effects == [m.Reject(KEY, reason)]


def test_idle_tick_does_nothing() -> None:
    assert step(idle(), m.Tick(10**12)) == (idle(), [])


def test_a_tick_or_a_rejected_report_for_an_unseen_key_creates_no_session() -> None:
    assert step(None, m.Tick(5)) == (None, [])
    state, effects = step(None, report("job-3"))
    assert state is None
    assert effects == [
        m.Reject(KEY, "report 'job-3': foreign reply_id (not a command of session 'controller')")
    ]


# --------------------------------------------------------------------------- TRAINING


def test_training_report_plays_the_new_model_and_goes_idle() -> None:
    state, effects = step(TRAINING, report("cmd-0", model_id=7))

    assert state == idle(next_command=1, trains=1, rounds=1, model_id=7, last_admitted=1000)
    assert effects == [m.Note(KEY, "round_completed", 1, detail="7"), play(1, 7)]


@pytest.mark.parametrize("kind", [OPTIMIZE, RETRAIN])
def test_training_instruction_is_queued(kind: InstructionKind) -> None:
    state, effects = step(TRAINING, instruction(kind, timestamp=2000))

    optimize = 2000 if kind is OPTIMIZE else None
    assert state == msgspec.structs.replace(
        TRAINING, queue=(Instruction(kind, 2000),), last_admitted=2000, last_optimize=optimize
    )
    assert effects == [m.Note(KEY, "queued", 1, detail=f"{kind.value} queued, 1 waiting")]


def test_training_update_params_waits_its_turn_in_the_queue() -> None:
    new = (("pMin", 0.02), ("gamma", 0.0))
    update = Instruction(UPDATE, 5, parameters=new)
    state, effects = step(TRAINING, m.InstructionArrived(update, 0))

    assert state == msgspec.structs.replace(TRAINING, queue=(update,))
    assert effects == [m.Note(KEY, "queued", 1, detail="UPDATE_PARAMS queued, 1 waiting")]

    state, effects = step(state, report("cmd-0", model_id=7))

    assert state == idle(next_command=1, trains=1, rounds=1, model_id=7, best_params=new,
                         last_admitted=1000)  # fmt: skip
    assert effects[-1] == m.Note(KEY, "params_updated", 1, detail=params_text(new, named=True))


def deadline(command_id: int | str, at_ms: int = 0) -> m.DeadlinePassed:
    return m.DeadlinePassed(m.Deadline(command_id), at_ms)


def marked(outstanding: m.Outstanding) -> m.Outstanding:
    return msgspec.structs.replace(outstanding, marked=True)


def test_training_tick_before_the_deadline_does_nothing() -> None:
    assert step(TRAINING, m.Tick(999)) == (TRAINING, [])


def test_a_deadline_is_not_due_until_the_timeout_has_passed_since_the_process_started() -> None:
    # Restarted at 900 after a long downtime: the deadline (1000) is past, the factory's
    # full timeout (CONFIG: 1000 ms) is not; the replay must be able to deliver its report.
    assert step(TRAINING, m.Tick(1899, since_ms=900)) == (TRAINING, [])
    state, _ = step(TRAINING, m.Tick(1900, since_ms=900))
    assert state.outstanding == marked(TRAINING.outstanding)


def test_training_tick_past_the_deadline_asks_once_for_a_deadline_marker_and_decides_nothing() -> (
    None
):
    state, effects = step(TRAINING, m.Tick(1000))
    again = step(state, m.Tick(5000))

    assert state == msgspec.structs.replace(TRAINING, outstanding=marked(TRAINING.outstanding))
    assert effects == [
        m.Note(KEY, "overdue", 1, detail="no report for train 'cmd-0': deadline marker sent"),
        m.MarkDeadline(KEY, f"{KEY}/deadline/cmd-0", m.Deadline("cmd-0")),
    ]
    assert again == (state, [])


def test_training_deadline_marker_resends_the_command_under_a_new_id() -> None:
    state, effects = step(TRAINING, deadline("cmd-0", at_ms=1500))

    resent = msgspec.structs.replace(TRAIN_0, id="cmd-1")
    assert state == msgspec.structs.replace(
        TRAINING, next_command=2, outstanding=m.Outstanding(resent, 1, 1, 2500, earlier=(0,))
    )
    assert effects == [
        m.Note(KEY, "timeout", 1, detail="no report for train 'cmd-0'"),
        m.Note(KEY, "retry", 1,
               detail="attempt 2 of train, as 'cmd-1': deadline passed without a report"),
        send(resent, attempt=1),
    ]  # fmt: skip


def test_a_deadline_marker_read_after_the_report_changes_nothing() -> None:
    answered, _ = step(TRAINING, report("cmd-0", model_id=7))

    assert step(answered, deadline("cmd-0")) == (answered, [])


def test_a_deadline_marker_of_an_attempt_already_resent_changes_nothing() -> None:
    resent, _ = step(TRAINING, deadline("cmd-0"))

    assert step(resent, deadline("cmd-0")) == (resent, [])


def test_a_late_success_of_an_earlier_attempt_answers_the_command() -> None:
    resent, _ = step(TRAINING, deadline("cmd-0"))

    state, effects = step(resent, report("cmd-0", model_id=7))
    duplicate = step(state, report("cmd-1", model_id=8))

    assert state == idle(next_command=2, trains=1, rounds=1, model_id=7, last_admitted=1000)
    assert effects == [m.Note(KEY, "round_completed", 1, detail="7"), play(1, 7)]
    assert duplicate == (state, [m.Reject(KEY, "report 'cmd-1': stale (its round is over)")])


def test_a_late_error_of_an_earlier_attempt_is_stale_and_the_resend_still_awaited() -> None:
    resent, _ = step(TRAINING, deadline("cmd-0"))

    state, effects = step(resent, report("cmd-0", ok=False, error="boom"))

    assert state == resent
    assert effects == [
        m.Reject(KEY, "report 'cmd-0': stale (a failed attempt, already resent as 'cmd-1')")
    ]


def test_a_deadline_marker_read_before_its_command_is_held_until_the_command_is_sent() -> None:
    state, effects = step(idle(), deadline("cmd-0"))

    assert state == idle(held=(m.Deadline("cmd-0"),))
    assert effects == [
        m.Note(KEY, "held", 0, detail="deadline marker 'cmd-0' held until its command is sent")
    ]
    state, effects = step(state, instruction(RETRAIN))
    assert state.outstanding == m.Outstanding(
        msgspec.structs.replace(TRAIN_0, id="cmd-1"), 1, 1, 1000, earlier=(0,)
    )
    assert effects[-1] == send(msgspec.structs.replace(TRAIN_0, id="cmd-1"), attempt=1)


def test_training_timeout_after_the_last_retry_aborts_and_plays_the_old_model() -> None:
    retried = msgspec.structs.replace(
        TRAINING, next_command=2,
        outstanding=m.Outstanding(msgspec.structs.replace(TRAIN_0, id="cmd-1"), 1, 1, 2000,
                                  earlier=(0,)),
    )  # fmt: skip

    state, effects = step(retried, deadline("cmd-1", at_ms=2000))

    assert state == idle(next_command=2, trains=1, rounds=1, last_admitted=1000)
    assert effects == [
        m.Note(KEY, "timeout", 1, detail="no report for train 'cmd-1'"),
        m.Note(
            KEY, "round_aborted", 1, detail="train failed 2 times: deadline passed without a report"
        ),
        play(1, -1),
    ]


def test_a_factory_error_report_resends_under_a_new_id_then_aborts() -> None:
    retried, first = step(TRAINING, report("cmd-0", ok=False, error="No dataset available"))
    aborted, second = step(retried, report("cmd-1", ok=False, error="No dataset available"))

    resent = msgspec.structs.replace(TRAIN_0, id="cmd-1")
    assert retried == msgspec.structs.replace(
        TRAINING, next_command=2, outstanding=m.Outstanding(resent, 1, 1, 1000, earlier=(0,))
    )
    assert first == [
        m.Note(KEY, "retry", 1, detail="attempt 2 of train, as 'cmd-1': No dataset available"),
        send(resent, attempt=1),
    ]
    assert aborted == idle(next_command=2, trains=1, rounds=1, last_admitted=1000)
    assert second == [
        m.Note(KEY, "round_aborted", 1, detail="train failed 2 times: No dataset available"),
        play(1, -1),
    ]


# --------------------------------------------------------------------------- WAITING_FOR_REPORT


def test_waiting_report_is_learnt_and_the_next_proposal_sent() -> None:
    state, effects = step(WAITING, report("cmd-1", f_val=-0.5, model_id=1))

    step_1 = opt_command(2, "opt_step", params_text(SECOND_POINT, named=False))
    assert state == msgspec.structs.replace(
        WAITING, next_command=3,
        round=msgspec.structs.replace(WAITING.round, optimiser=SECOND_SNAPSHOT),
        outstanding=m.Outstanding(step_1, 2, 0, 1000),
    )  # fmt: skip
    assert effects == [
        m.Note(KEY, "score", 1, step=0, value=-0.5),
        m.Note(KEY, "step", 1, step=1, detail=step_1.params),
        send(step_1),
    ]


def test_the_report_of_the_last_step_sends_finalise_with_the_first_best_index() -> None:
    state, _ = step(WAITING, report("cmd-1", f_val=-0.5))

    state, effects = step(state, report("cmd-2", f_val=-0.7))

    assert state == FINALIZING
    assert effects == [m.Note(KEY, "score", 1, step=1, value=-0.7), send(FINALISE)]


def test_a_step_report_without_f_val_counts_as_a_factory_error() -> None:
    state, effects = step(WAITING, report("cmd-1", model_id=3))

    resent = msgspec.structs.replace(STEP_0, id="cmd-2")
    assert state == msgspec.structs.replace(
        WAITING, next_command=3, outstanding=m.Outstanding(resent, 2, 1, 1000, earlier=(1,))
    )
    assert effects == [
        m.Note(KEY, "retry", 1, step=0,
               detail="attempt 2 of opt_step, as 'cmd-2': step report carries no metrics.f_val"),
        send(resent, attempt=1),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("reply_id", "reason"),
    [
        ("cmd-0", "report 'cmd-0': acknowledges opt_initialise, which needs no answer"),
        ("job-1", "report 'job-1': foreign reply_id (not a command of session 'controller')"),
        ("cmd-01", "report 'cmd-01': foreign reply_id (not a command of session 'controller')"),
    ],
)
def test_waiting_report_that_is_not_the_awaited_one_is_rejected_and_changes_nothing(
    reply_id: int | str, reason: str
) -> None:
    state, effects = step(WAITING, report(reply_id, f_val=-1.0))

    assert state == WAITING
    assert effects == [m.Reject(KEY, reason)]


def test_a_refused_opt_initialise_ends_the_round_at_once_playing_the_model_the_engine_had() -> None:
    had_model = msgspec.structs.replace(WAITING, model_id=4)

    refused = report("cmd-0", ok=False, error="No dataset available to lock")

    state, effects = step(had_model, refused)

    assert state == idle(
        next_command=2, optimisations=1, rounds=1, model_id=4, last_admitted=1000,
        last_optimize=1000,
    )  # fmt: skip
    assert effects == [
        m.Note(KEY, "round_aborted", 1, step=0,
               detail="opt_initialise refused: No dataset available to lock"),
        play(1, 4),
    ]  # fmt: skip


def test_a_step_refused_after_a_refused_opt_initialise_is_stale() -> None:
    aborted, _ = step(WAITING, report("cmd-0", ok=False, error="No dataset available to lock"))

    state, effects = step(aborted, report("cmd-1", ok=False, error="No optimization session"))

    assert state == aborted
    assert effects == [m.Reject(KEY, "report 'cmd-1': stale (its round is over)")]


def test_a_held_opt_initialise_refusal_ends_the_round_before_its_step_report_is_read() -> None:
    refused = report("cmd-0", ok=False, error="No dataset available to lock")
    stepped = report("cmd-1", ok=False, error="No optimization session active")
    held, _ = step(step(None, refused)[0], stepped)

    state, effects = step(held, instruction(OPTIMIZE))

    assert state == idle(next_command=2, optimisations=1, rounds=1, last_admitted=1000,
                         last_optimize=1000)  # fmt: skip
    assert effects[-3:] == [
        m.Note(KEY, "round_aborted", 1, step=0,
               detail="opt_initialise refused: No dataset available to lock"),
        play(1, -1),
        m.Reject(KEY, "report 'cmd-1': stale (its round is over)"),
    ]  # fmt: skip


def test_reply_ids_are_compared_as_command_numbers_whatever_their_wire_type() -> None:
    by_string, _ = step(WAITING, report("cmd-1", f_val=-0.5))
    by_number, _ = step(WAITING, report(1, f_val=-0.5))

    assert by_number == by_string


def test_a_report_from_an_earlier_round_is_rejected_as_stale() -> None:
    later = msgspec.structs.replace(
        WAITING, next_command=12, round=msgspec.structs.replace(WAITING.round, first_command=10)
    )

    state, effects = step(later, report("cmd-5", f_val=-1.0))

    assert state == later
    assert effects == [m.Reject(KEY, "report 'cmd-5': stale (its round is over)")]


@pytest.mark.parametrize("kind", [OPTIMIZE, RETRAIN])
def test_waiting_instruction_is_queued(kind: InstructionKind) -> None:
    state, effects = step(WAITING, instruction(kind, timestamp=3000))

    optimize = 3000 if kind is OPTIMIZE else 1000
    assert state == msgspec.structs.replace(
        WAITING, queue=(Instruction(kind, 3000),), last_admitted=3000, last_optimize=optimize
    )
    assert effects == [m.Note(KEY, "queued", 1, detail=f"{kind.value} queued, 1 waiting")]


def test_waiting_update_params_is_queued() -> None:
    new = (("pMin", 0.09), ("gamma", 0.004))
    update = Instruction(UPDATE, 5, parameters=new)
    state, _ = step(WAITING, m.InstructionArrived(update, 0))
    assert state == msgspec.structs.replace(WAITING, queue=(update,))


def test_waiting_deadline_marker_resends_the_step_under_a_new_id() -> None:
    state, effects = step(WAITING, deadline("cmd-1", at_ms=1500))

    resent = msgspec.structs.replace(STEP_0, id="cmd-2")
    assert state == msgspec.structs.replace(
        WAITING, next_command=3, outstanding=m.Outstanding(resent, 2, 1, 2500, earlier=(1,))
    )
    assert effects[-1] == send(resent, attempt=1)


# --------------------------------------------------------------------------- FINALIZING


def test_finalizing_report_plays_its_model_and_adopts_the_reported_parameters() -> None:
    reported = (("gamma", 0.003), ("pMin", 0.04))

    state, effects = step(FINALIZING, report("cmd-3", model_id=12, params=reported))

    assert state == idle(next_command=4, optimisations=1, rounds=1, model_id=12,
                         last_admitted=1000, last_optimize=1000, best_params=reported)  # fmt: skip
    assert effects == [m.Note(KEY, "round_completed", 1, detail="12"), play(1, 12)]


def test_finalizing_report_without_parameters_adopts_the_best_observed_point() -> None:
    state, _ = step(FINALIZING, report("cmd-3", model_id=12))

    assert state.best_params == optimizer.named(CONFIG.profile, SECOND_POINT)


@pytest.mark.parametrize("kind", [OPTIMIZE, RETRAIN])
def test_finalizing_instruction_is_queued(kind: InstructionKind) -> None:
    state, _ = step(FINALIZING, instruction(kind, timestamp=4000))
    optimize = 4000 if kind is OPTIMIZE else 1000
    assert state == msgspec.structs.replace(
        FINALIZING, queue=(Instruction(kind, 4000),), last_admitted=4000, last_optimize=optimize
    )


def test_finalizing_update_params_is_queued() -> None:
    new = (("pMin", 0.01), ("gamma", 0.0))
    update = Instruction(UPDATE, 5, parameters=new)
    state, _ = step(FINALIZING, m.InstructionArrived(update, 0))
    assert state == msgspec.structs.replace(FINALIZING, queue=(update,))


def test_finalizing_timeout_after_the_last_retry_plays_the_model_the_engine_had() -> None:
    had_model = msgspec.structs.replace(
        FINALIZING, model_id=4, outstanding=m.Outstanding(FINALISE, 3, 1, 1000, marked=True)
    )

    state, effects = step(had_model, deadline("cmd-3", at_ms=1000))

    assert state == idle(
        next_command=4,
        optimisations=1,
        rounds=1,
        model_id=4,
        last_admitted=1000,
        last_optimize=1000,
    )
    assert effects[-1] == play(1, 4)


def test_finalizing_report_for_another_command_is_rejected() -> None:
    state, effects = step(FINALIZING, report("cmd-2", f_val=-0.7))

    assert state == FINALIZING
    assert effects == [
        m.Reject(KEY, "report 'cmd-2': duplicate (already answered; awaiting 'cmd-3')")
    ]


# --------------------------------------------------------------------------- queueing and counters


def test_instructions_queue_in_their_own_order_whatever_the_phase() -> None:
    state, _ = step(TRAINING, instruction(RETRAIN, timestamp=2000))
    state, _ = step(state, instruction(OPTIMIZE, timestamp=3000))
    state, _ = step(state, instruction(RETRAIN, timestamp=4000))

    assert state.queue == (
        Instruction(RETRAIN, 2000), Instruction(OPTIMIZE, 3000), Instruction(RETRAIN, 4000)
    )  # fmt: skip


@pytest.mark.parametrize(
    ("gap", "sequence", "coalesced"),
    [
        # Gap 0: only an instruction no newer than the last admitted one of its rank or more.
        (0, [(RETRAIN, 1000), (RETRAIN, 1000), (RETRAIN, 999), (RETRAIN, 1001)], [1, 2]),
        (0, [(RETRAIN, 1000), (OPTIMIZE, 1000), (RETRAIN, 1000), (OPTIMIZE, 1000)], [2, 3]),
        # A gap in the instructions' own time units: an OPTIMIZE outranks a recent RETRAIN.
        (500, [(RETRAIN, 1000), (RETRAIN, 1499), (OPTIMIZE, 1200), (RETRAIN, 1600),
               (OPTIMIZE, 1600), (RETRAIN, 2200)], [1, 3, 4]),
    ],
)  # fmt: skip
def test_coalescing_depends_only_on_the_instruction_sequence(
    gap: int, sequence: list[tuple[InstructionKind, int]], coalesced: list[int]
) -> None:
    config = seed_config(instruction_min_gap=gap)
    busy = msgspec.structs.replace(FINALIZING, last_admitted=-(10**6), last_optimize=-(10**6))
    for start in (None, busy):  # the same verdicts whatever the session is doing
        state, dropped = start, []
        for index, (kind, ts) in enumerate(sequence):
            state, effects = step(state, instruction(kind, timestamp=ts), config)
            if any(isinstance(e, m.Reject) and "coalesced" in e.reason for e in effects):
                dropped.append(index)
        assert dropped == coalesced


def test_a_coalesced_instruction_is_dead_lettered_with_its_reason_and_changes_nothing() -> None:
    state, effects = step(TRAINING, instruction(RETRAIN, timestamp=1000))

    assert state == TRAINING
    reason = "an OPTIMIZE or RETRAIN was admitted at 1000 (INSTRUCTION_MIN_GAP 0)"
    assert effects == [m.Reject(KEY, f"instruction: RETRAIN at 1000 coalesced: {reason}")]


def test_an_instruction_that_finds_the_queue_full_is_dead_lettered() -> None:
    config = seed_config(max_queued=1)
    state, _ = step(TRAINING, instruction(RETRAIN, timestamp=2000), config)

    same, effects = step(state, instruction(OPTIMIZE, timestamp=3000), config)

    assert same == state
    assert effects == [m.Reject(KEY, "instruction: OPTIMIZE at 3000 dropped: 1 instructions "
                                     "already queued (MAX_QUEUED_INSTRUCTIONS)")]  # fmt: skip


def test_the_next_queued_instruction_starts_as_soon_as_the_round_ends() -> None:
    queued, _ = step(TRAINING, instruction(RETRAIN, timestamp=2000))

    state, effects = step(queued, report("cmd-0", model_id=7))

    second_train = train_command(number=1, train_id=1, ts=2000)
    assert state == idle(
        phase=m.Phase.TRAINING, next_command=2, trains=2, rounds=2, model_id=7, last_admitted=2000,
        round=m.Round("train", 2, 2000, 1, -1, 1),
        outstanding=m.Outstanding(second_train, 1, 0, 1000),
    )  # fmt: skip
    assert effects == [
        m.Note(KEY, "round_completed", 1, detail="7"),
        play(1, 7),
        m.Note(KEY, "round_started", 2, detail="RETRAIN"),
        pause(2, ts=2000),
        send(second_train),
    ]


def test_counters_carry_on_across_rounds_and_optimise_rounds_keep_observations() -> None:
    rtcef = m.MachineConfig(
        dialect="rtcef",
        profile=msgspec.structs.replace(dialects.PROFILES["rtcef"], budget=3, keep=2),
        initial_params=(("confidence", 0.2), ("order", 2), ("pmin", 0.001), ("gamma", 0.001)),
    )
    state, _ = m.advance(None, instruction(OPTIMIZE), key=KEY, config=rtcef)
    for number in (1, 2, 3):
        state, _ = m.advance(state, report(number, f_val=-0.1 * number), key=KEY, config=rtcef)
    state, _ = m.advance(state, report(4, model_id=5), key=KEY, config=rtcef)
    state, effects = m.advance(state, instruction(OPTIMIZE, timestamp=2000), key=KEY, config=rtcef)

    assert [e.command.id for e in effects if isinstance(e, m.SendCommand)] == [5, 6]
    assert [e.command.optimisation_id for e in effects if isinstance(e, m.SendCommand)] == [1, 1]
    assert state.round is not None
    assert state.round.optimiser is not None
    assert [o.y for o in state.round.optimiser.prior] == [-0.2, -0.30000000000000004]
    assert (state.next_command, state.optimisations, state.rounds) == (7, 2, 2)
    # The round's first step measures the best kept point again (remeasure_best_kept).
    first_step = [e.command for e in effects if isinstance(e, m.SendCommand)][1]
    assert first_step.type == "opt_step"
    assert json.loads(first_step.params) == {"params": list(state.round.optimiser.prior[1].x)}


# --------------------------------------------------------------------------- multi-model mode

MULTI = seed_config(keys=("a", "b", "c"))


def test_multi_model_command_ids_lead_back_to_their_session_key() -> None:
    _, for_b = m.advance(None, instruction(RETRAIN), key="b", config=MULTI)
    command = next(e.command for e in for_b if isinstance(e, m.SendCommand))

    assert command.id == "cmd-1"  # counter 0, index 1 of 3
    routed = m.route_report(report(command.id).report, MULTI)
    assert routed == "b"


def test_multi_model_instruction_is_routed_by_model_id_or_rejected() -> None:
    assert m.route_instruction(Instruction(RETRAIN, 1, model_id="c"), MULTI) == "c"
    assert m.route_instruction(Instruction(RETRAIN, 1, model_id="z"), MULTI) == m.Rejection(
        "instruction: `$.model_id` 'z' is not one of the configured models ['a', 'b', 'c']"
    )
    assert m.route_instruction(Instruction(RETRAIN, 1), seed_config()) == KEY


def test_a_report_routed_to_the_wrong_session_is_foreign_there() -> None:
    state, _ = m.advance(None, instruction(RETRAIN), key="a", config=MULTI)

    same, effects = m.advance(state, report("cmd-1", model_id=3), key="a", config=MULTI)

    assert same == state
    assert effects == [
        m.Reject("a", "report 'cmd-1': foreign reply_id (not a command of session 'a')")
    ]


# --------------------------------------------------------------------------- state versions


def test_a_version_1_state_is_migrated_its_pending_instruction_heading_the_queue() -> None:
    v1 = msgspec.structs.replace(TRAINING, version=1, pending=Instruction(OPTIMIZE, 3000),
                                 last_admitted=None)  # fmt: skip

    assert m.upgrade(v1) == msgspec.structs.replace(
        TRAINING, queue=(Instruction(OPTIMIZE, 3000),), last_admitted=3000, last_optimize=3000
    )


def test_a_version_3_state_is_read_as_version_4_its_costs_unknown_its_round_paused() -> None:
    # A version-3 Outstanding was pickled with its first six fields, a Round with seven.
    v3 = msgspec.structs.replace(
        TRAINING, version=3,
        outstanding=m.Outstanding(*msgspec.structs.astuple(TRAINING.outstanding)[:6]),
        round=m.Round(*msgspec.structs.astuple(TRAINING.round)[:7]),
    )  # fmt: skip

    assert m.upgrade(v3) == TRAINING
    assert m.upgrade(v3).round == msgspec.structs.replace(TRAINING.round, paused=True)


def test_a_version_2_state_is_read_as_version_4_with_its_attempt_unmarked() -> None:
    # A version-2 Outstanding was pickled with its first four fields: the rest default.
    v2 = msgspec.structs.replace(
        TRAINING, version=2, outstanding=m.Outstanding(*msgspec.structs.astuple(
            TRAINING.outstanding)[:4]),
    )  # fmt: skip

    assert m.upgrade(v2) == TRAINING


def test_the_version_1_recovery_fixture_unpickles_and_migrates() -> None:
    from dataflow.tools.inspection import sessions

    (view,) = sessions(Path(__file__).resolve().parents[1] / "data" / "recovery-v1")

    assert (view.phase, view.pending, view.outstanding) == (
        "WAITING_FOR_REPORT", "RETRAIN (timestamp 2000)", "opt_step 2 attempt 1"
    )  # fmt: skip


def test_a_state_from_a_newer_controller_is_refused_naming_both_versions() -> None:
    newer = msgspec.structs.replace(TRAINING, version=m.STATE_VERSION + 1)

    with pytest.raises(StateVersionError) as refused:
        step(newer, m.Tick(0))
    assert (
        f"with state version {m.STATE_VERSION + 1}; this controller reads versions 1 to "
        f"{m.STATE_VERSION}."
    ) in str(refused.value)
