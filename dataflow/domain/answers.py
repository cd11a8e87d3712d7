"""Answers: which command a report answers, and what a deadline marker read back means.

Role: ``read_report`` and ``read_deadline`` classify a report or marker once
(``dataflow.domain.inputs``), its command id decoded once. A report is only ever
the answer to the outstanding command of the phase it arrives in, the refusal of
the round's ``opt_initialise``, or a stray one (duplicate, stale or foreign),
whatever the merge order: one for a command not sent yet is early
(``dataflow.domain.holding``). An answer's score is learned here, and the
optimiser asked for its next point, so that the class says where the round goes.

A report or marker that would be taken, but was appended to the report topic
before its command was sent, is forged (``forged``): a genuine one is written after
its command, and the command after the record that made the controller send it
(``Outstanding.sent_ms``). Both times are the records' own, in the logs, so a
replay decides the same. This catches a report written ahead for a command not
sent yet (held, then fed in when it is sent); one written for the command already
awaited cannot be told from the factory's own, and only the report topic's ACL
(the factory's principal alone may write it) keeps it out.
"""

from __future__ import annotations

from dataflow.domain import cost, optimizer, strategy
from dataflow.domain.config import MachineConfig
from dataflow.domain.effects import Note, Reject
from dataflow.domain.events import DeadlinePassed, ReportArrived
from dataflow.domain.holding import counter_of, named, read_early
from dataflow.domain.inputs import (
    Built,
    Early,
    GiveUp,
    InitialiseRefused,
    Resend,
    Scored,
    ScoredLast,
    Spent,
    Stray,
    When,
)
from dataflow.domain.messages import CommandType, Deadline, Report
from dataflow.domain.optimizer import OptimiserSnapshot
from dataflow.domain.results import Result, optimiser_of, round_of
from dataflow.domain.state import Session

ReportInput = Early | Stray | InitialiseRefused | Scored | ScoredLast | Built | Resend | GiveUp
DeadlineInput = Early | Stray | Spent | Resend | GiveUp


def read_report(state: Session, event: ReportArrived, config: MachineConfig) -> ReportInput:
    """What a report is to the session (see ``dataflow.domain.inputs``)."""
    report = event.report
    counter = counter_of(state, report, config)  # decoded once
    early = read_early(state, report, counter, config)
    if early is not None:
        return early
    reason = forged(state, report, counter, config)
    if reason:
        return Stray(reason)
    round_, outstanding = state.round, state.outstanding
    if round_ is not None and round_.kind == "optimise" and counter == round_.first_command:
        if report.ok:
            return Stray(f"report {report.reply_id!r:.40}: acknowledges opt_initialise, "
                         "which needs no answer")  # fmt: skip
        return InitialiseRefused(report)
    answers = outstanding is not None and (
        counter == outstanding.number or (report.ok and counter in outstanding.earlier)
    )  # a late success of an earlier attempt (resent after a timeout) still answers it
    if outstanding is None or not answers:
        return Stray(_unmatched(state, report, counter))
    stepping = outstanding.command.type == CommandType.OPT_STEP.value
    missing = "step report carries no metrics.f_val" if stepping else "report carries no model_id"
    when = When(event.at_ms, report.logged_ms)
    if report.ok and report.f_val is not None and stepping:
        return _scored(state, report.f_val, _cost_s(state, report, counter), when)
    if report.ok and report.model_id is not None and not stepping:
        return Built(report, report.model_id)
    if counter in outstanding.earlier:  # a success without what it needs: the latest may do
        return Stray(f"report {report.reply_id!r:.40}: stale (an earlier attempt's answer, "
                     f"{missing})")  # fmt: skip
    return failed(outstanding.attempt, report.error or missing, when, config, timed_out=False)


def read_deadline(state: Session, event: DeadlinePassed, config: MachineConfig) -> DeadlineInput:
    """A marker for the outstanding attempt times it out; any other is spent (or early)."""
    counter = counter_of(state, event.deadline, config)
    early = read_early(state, event.deadline, counter, config)
    if early is not None:
        return early
    outstanding = state.outstanding
    if outstanding is None or counter != outstanding.number:
        return Spent()
    reason = forged(state, event.deadline, counter, config)
    if reason:
        return Stray(reason)
    when = When(event.at_ms, event.deadline.logged_ms)
    reason = "deadline passed without a report"
    return failed(outstanding.attempt, reason, when, config, timed_out=True)


def forged(
    state: Session, item: Report | Deadline, counter: int | None, config: MachineConfig
) -> str | None:
    """Why a report or marker the session would take was not written by its answerer, or None.

    Judged: a report naming the awaited attempt, or refusing the round's
    ``opt_initialise`` (sent with the round's first step, from the same record). It is
    forged if the report topic stamped it more than ``report_clock_skew_ms`` before
    the record that made the controller send the awaited attempt: its command was not
    sent yet. A late success of an earlier attempt is not judged against the awaited
    one's cause (a deadline marker, later than its own): it was judged when that
    attempt was sent if it was held then, and otherwise its command was out already.
    Unknown times decide nothing.
    """
    outstanding, round_ = state.outstanding, state.round
    if outstanding is None or outstanding.sent_ms is None or item.logged_ms is None:
        return None
    ok = isinstance(item, Deadline) or item.ok
    refusal = (not ok and round_ is not None and round_.kind == "optimise"
               and counter == round_.first_command)  # fmt: skip
    taken = counter == outstanding.number or refusal
    skew = config.report_clock_skew_ms
    if not taken or item.logged_ms + skew >= outstanding.sent_ms:
        return None
    what = "report" if isinstance(item, Report) else "deadline marker"
    return (f"{what} {named(item)!r:.40}: forged (appended at {item.logged_ms} ms, before its "
            f"command was sent: it followed a record appended at {outstanding.sent_ms} ms; "
            f"REPORT_CLOCK_SKEW_MS {skew})")  # fmt: skip


def failed(
    attempt: int, reason: str, when: When, config: MachineConfig, *, timed_out: bool
) -> Resend | GiveUp:
    """The outstanding command's ``attempt`` failed: resent while retries last, then given up."""
    if attempt < config.max_retries:
        return Resend(reason, when, timed_out)
    return GiveUp(reason, when, timed_out)


def reject(state: Session, stray: Stray, config: MachineConfig) -> Result:
    """Dead-letter a report or marker that answers nothing awaited, with the reason."""
    return state, [Reject(state.key, stray.reason)]


def _scored(state: Session, f_val: float, cost_s: float | None, when: When) -> Scored | ScoredLast:
    """Learn a step's score; the round steps on if its budget affords the next point."""
    round_ = round_of(state)
    before = optimiser_of(round_)
    snapshot = optimizer.learn(before, f_val, cost_s)
    step = len(snapshot.observations) - 1
    notes = (Note(state.key, "score", round_.number, step=step, value=f_val, seconds=cost_s),
             *_over_budget(state.key, round_.number, before, snapshot))  # fmt: skip
    if snapshot.remaining <= 0:
        return ScoredLast(snapshot, notes, when)
    point, proposed = strategy.propose(snapshot)
    accounts = None if strategy.affordable(proposed) else cost.ledger(snapshot)
    if accounts is None:  # affordable (a round without a time budget affords every step)
        return Scored(snapshot, notes, when, point, proposed)
    predicted = proposed.predicted_s or 0.0
    finalise, margin = accounts.finalised_s(predicted), accounts.margin
    detail = (
        f"{accounts.spent:.1f} s spent, the next step predicted {predicted:.1f} s and "
        f"the finalised model {finalise:.1f} s ({predicted * margin:.1f} s and "
        f"{finalise * margin:.1f} s at the cost model's spread), ROUND_BUDGET_S "
        f"{accounts.budget_s:g}: finalising after {step + 1} steps"
    )
    spent = Note(state.key, "budget_spent", round_.number, step=step, detail=detail)
    return ScoredLast(snapshot, (*notes, spent), when)


def _cost_s(state: Session, report: Report, counter: int | None) -> float | None:
    """A step's factory seconds: from its attempt's cause to its report, in the logs.

    Unknown for a late answer to an earlier attempt (resent meanwhile): the time of a
    failed attempt or of a wait for a deadline is not what the configuration costs.
    """
    outstanding = state.outstanding
    if outstanding is None or outstanding.sent_ms is None or report.logged_ms is None:
        return None
    if counter != outstanding.number:
        return None
    return (report.logged_ms - outstanding.sent_ms) / 1000


def _over_budget(
    key: str, number: int, before: OptimiserSnapshot, after: OptimiserSnapshot
) -> list[Note]:
    """A note when a step took the round past its time budget (it took longer than predicted)."""
    accounts = cost.ledger(after)
    if accounts is None or accounts.expected_total <= accounts.budget_s:
        return []
    taken = after.observations[-1].cost_s
    predicted = (
        "unpredicted" if before.predicted_s is None else f"predicted {before.predicted_s:.1f} s"
    )
    detail = (f"step took {taken if taken is not None else float('nan'):.1f} s ({predicted}): "
              f"the round expects {accounts.expected_total:.1f} s of factory time with its "
              f"finalised model, over ROUND_BUDGET_S {accounts.budget_s:g}")  # fmt: skip
    return [Note(key, "over_budget", number, step=len(after.observations) - 1, detail=detail)]


def _unmatched(state: Session, report: Report, counter: int | None) -> str:
    reply = f"report {report.reply_id!r:.40}"
    if counter is None:
        return f"{reply}: foreign reply_id (not a command of session {state.key!r})"
    if counter >= state.next_command:
        return f"{reply}: foreign reply_id (no such command was sent)"
    awaited = state.outstanding.command.id if state.outstanding else None
    if state.outstanding is not None and counter in state.outstanding.earlier:
        return f"{reply}: stale (a failed attempt, already resent as {awaited!r})"
    if state.round is not None and counter >= state.round.first_command:
        return f"{reply}: duplicate (already answered; awaiting {awaited!r})"
    return f"{reply}: stale (its round is over)"
