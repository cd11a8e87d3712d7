"""What each dialect's services write, as the stand-ins imitate them.

Role: the stand-ins' knowledge of the real services (``dataflow.sim.factory``,
``dataflow.sim.observer``), kept out of the domain: the controller never writes a
report, so the domain's ``Dialect`` record does not say how one is written. One
``Services`` record per dialect, by the dialect's name; a test checks every
dialect in the registry has one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

from dataflow.domain.dialects import rtcef, seed
from dataflow.domain.messages import FactoryCommand, InstructionKind


@dataclass(frozen=True)
class Services:
    """How a dialect's Observer and ModelFactory behave, as far as the stand-ins imitate them."""

    #: Instruction kinds its Observer sends, and whether its records name a ``model_id``.
    instruction_kinds: frozenset[InstructionKind]
    model_ids: bool
    #: A successful report: (command, model id, params_dict text, metrics text, how the
    #: model was made: "retrain", "optimisation" or None for a step) -> report struct.
    success_report: Callable[[FactoryCommand, int, str, str, str | None], msgspec.Struct]
    #: A failure report for a command, or None if its factory stays silent on errors.
    error_report: Callable[[FactoryCommand, str], msgspec.Struct | None]
    #: The ``params_dict`` text its factory reports for a ``train`` command.
    train_params_dict: Callable[[FactoryCommand], str]


def _seed_success(
    command: FactoryCommand, model: int, params_dict: str, metrics: str, method: str | None
) -> seed.ReportWire:
    """A ``status: success`` report; a built model names its path and how it was made."""
    return seed.ReportWire(
        reply_id=command.id,
        params_dict=params_dict,
        model_id=model,
        metrics=metrics,
        status="success",
        model_path=f"/models/wayeb_{model}.model" if method else None,
        creation_method=method if command.type == "opt_finalise" else None,
    )


def _seed_error(command: FactoryCommand, reason: str) -> seed.ReportWire:
    """A ``status: error`` report."""
    return seed.ReportWire(command.id, status="error", error=reason)


def _seed_train_params(command: FactoryCommand) -> str:
    """The parameters without the command's ``{"params": ...}`` wrapper."""
    return json.dumps(json.loads(command.params)["params"])


def _rtcef_success(
    command: FactoryCommand, model: int, params_dict: str, metrics: str, method: str | None
) -> rtcef.ReportWire:
    """The four fields."""
    return rtcef.ReportWire(int(command.id), params_dict, model, metrics)


def _rtcef_error(command: FactoryCommand, reason: str) -> None:
    """None: the original factories have no error reports, an error is silence."""
    return None


def _rtcef_train_params(command: FactoryCommand) -> str:
    """The command's params text, ``{"params": ...}`` wrapper kept (as the originals do)."""
    return command.params


#: Every dialect's services, by the dialect's name.
SERVICES: Final[Mapping[str, Services]] = {
    seed.DIALECT.name: Services(
        instruction_kinds=frozenset(InstructionKind), model_ids=True,
        success_report=_seed_success, error_report=_seed_error,
        train_params_dict=_seed_train_params,
    ),
    rtcef.DIALECT.name: Services(
        instruction_kinds=frozenset({InstructionKind.OPTIMIZE, InstructionKind.RETRAIN}),
        model_ids=False, success_report=_rtcef_success, error_report=_rtcef_error,
        train_params_dict=_rtcef_train_params,
    ),
}  # fmt: skip
