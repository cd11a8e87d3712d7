"""Turn what an offline optimisation leaves behind into a ``WARM_START_FILE``.

Role: an offline tool. The original RTCEF optimised each model offline with
scikit-optimize and saved the ``OptimizeResult`` with ``skopt.dump`` (a pickle,
e.g. ``skopt_model_enteringAreaGPH_..._trm_1.pkl``). The controller never
unpickles anything: this command reads such a file once, on an operator's
machine, and writes the plain JSON document the controller reads
(``dimensions``, ``x_iters``, ``func_vals``), checked against the optimiser
profile it will be used with (dimension names match without regard to case).

**Unpickling runs code.** Convert only files you trust (your own offline runs):
a crafted pickle executes whatever it likes when loaded. Loading needs
scikit-optimize (and its scikit-learn and SciPy) installed where this runs.

Command line::

    python -m dataflow.tools.warmstart RESULT.pkl [-o warm-start.json] [--profile rtcef]
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dataflow.domain import dialects, optimizer
from dataflow.domain.errors import ConfigError

TRUST_WARNING = "warmstart: unpickling runs code; convert only optimisation results you trust"


def document_from_result(result: Any) -> dict[str, Any]:
    """The warm-start document of a loaded skopt ``OptimizeResult`` (or anything shaped like it).

    Dimensions keep the result's own names and order; values become plain JSON
    numbers. Raises ``ConfigError`` when the result lacks a named search space
    or its evaluations are malformed.
    """
    try:
        dimensions = list(result.space.dimensions)
        rows = [list(row) for row in result.x_iters]
        ys = [float(y) for y in result.func_vals]
    except (AttributeError, TypeError, ValueError) as error:
        raise ConfigError(f"not a scikit-optimize OptimizeResult ({error})") from error
    described = []
    for index, dimension in enumerate(dimensions):
        name = getattr(dimension, "name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"dimension {index} has no name: names are what match it")
        bounds = getattr(dimension, "bounds", None)
        if not isinstance(bounds, tuple | list) or len(bounds) != 2:
            raise ConfigError(f"dimension {name!r} has no numeric (low, high) bounds")
        low, high = bounds
        described.append(
            {"name": name, "kind": type(dimension).__name__, "bounds": [_plain(low), _plain(high)]}
        )
    if len(rows) != len(ys):
        raise ConfigError(f"{len(rows)} x_iters but {len(ys)} func_vals")
    if any(len(row) != len(described) for row in rows):
        raise ConfigError(f"every x_iters row must have {len(described)} values")
    if not all(math.isfinite(y) for y in ys):
        raise ConfigError("func_vals must be finite")
    return {
        "dimensions": described,
        "x_iters": [[_plain(v) for v in row] for row in rows],
        "func_vals": ys,
    }


def load_result(path: Path) -> Any:
    """Unpickle a skopt result. Runs code from the file: trusted files only."""
    with path.open("rb") as handle, warnings.catch_warnings():
        # Old pickles name SciPy's and scikit-learn's classes by deprecated paths.
        warnings.simplefilter("ignore", DeprecationWarning)
        return pickle.load(handle)  # noqa: S301 - the documented purpose: trusted files only


def render(document: Mapping[str, Any]) -> str:
    """The document as JSON with one evaluation per line (diffs and reviews stay readable)."""
    lines = ['{"dimensions": [']
    lines.append(",\n".join(f"  {json.dumps(d)}" for d in document["dimensions"]))
    lines.append('], "x_iters": [')
    lines.append(",\n".join(f"  {json.dumps(row)}" for row in document["x_iters"]))
    lines.append(f'], "func_vals": {json.dumps(document["func_vals"])}}}')
    return "\n".join(lines) + "\n"


def check(document: Mapping[str, Any], profile: optimizer.Profile) -> int:
    """How many observations the controller will read from ``document``.

    Raises ``ConfigError`` when the dimensions do not match the profile's or a
    value is outside its bounds.
    """
    return len(optimizer.observations_from_warm_start(profile, document))


def _plain(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"unexpected boolean value {value!r}")
    if hasattr(value, "item"):  # a NumPy scalar
        value = value.item()
    if isinstance(value, int):
        return value
    return float(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: convert, check against a profile, write; exit 2 on any problem."""
    parser = argparse.ArgumentParser(
        prog="python -m dataflow.tools.warmstart",
        description="Convert a scikit-optimize OptimizeResult pickle into WARM_START_FILE JSON. "
        "Unpickling runs code: convert only files you trust.",
    )
    parser.add_argument("result", type=Path, help="the .pkl written by skopt.dump")
    parser.add_argument("-o", "--output", type=Path, help="write here (default: stdout)")
    parser.add_argument(
        "--profile",
        default="rtcef",
        choices=sorted(dialects.PROFILES),
        help="check the dimensions against this optimiser profile (default: rtcef)",
    )
    args = parser.parse_args(argv)
    print(TRUST_WARNING, file=sys.stderr)
    try:
        document = document_from_result(load_result(args.result))
        count = check(document, dialects.PROFILES[args.profile])
    except (ModuleNotFoundError, ImportError, AttributeError) as error:
        print(f"warmstart: cannot load {args.result}: {error} (a class it names is missing:"
              " is scikit-optimize installed, in a compatible version?)",
              file=sys.stderr)  # fmt: skip
        return 2
    except (OSError, EOFError, pickle.UnpicklingError, ConfigError) as error:
        print(f"warmstart: {args.result}: {error}", file=sys.stderr)
        return 2
    text = render(document)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    print(f"warmstart: {count} observations for profile {args.profile!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
