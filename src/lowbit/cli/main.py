"""``lowbit``: the typer application. Importing this module imports neither torch nor
transformers; each command imports what it needs when it runs."""

from __future__ import annotations

import sys

import typer

from lowbit.cli import compare as compare_cmd
from lowbit.cli import eval as eval_cmd
from lowbit.cli import export as export_cmd
from lowbit.cli import inspect as inspect_cmd
from lowbit.cli import ls as ls_cmd
from lowbit.cli import pareto as pareto_cmd
from lowbit.cli import perf as perf_cmd
from lowbit.cli import plan as plan_cmd
from lowbit.cli import quantize as quantize_cmd
from lowbit.cli import run as run_cmd
from lowbit.cli import sensitivity as sensitivity_cmd
from lowbit.cli import sweep as sweep_cmd

app = typer.Typer(
    name="lowbit",
    help="A lab for low-bit and mixed-precision quantization of large language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_cmd.run)
app.command("quantize")(quantize_cmd.quantize)
app.command("eval")(eval_cmd.evaluate)
app.command("compare")(compare_cmd.compare)
app.command("export")(export_cmd.export)
app.command("sensitivity")(sensitivity_cmd.sensitivity)
app.command("plan")(plan_cmd.plan)
app.command("pareto")(pareto_cmd.pareto)
app.command("perf")(perf_cmd.perf)
app.command("profile")(perf_cmd.profile)
app.command("inspect")(inspect_cmd.inspect)
app.command("ls")(ls_cmd.ls)
app.command("sweep")(sweep_cmd.sweep)
app.command("results")(sweep_cmd.results)


def main() -> None:
    """Entry point that turns lowbit's own errors into one clear line and exit code 2."""
    from lowbit.errors import LowbitError

    try:
        app(standalone_mode=False)
    except LowbitError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except OSError as exc:  # unwritable output, full disk, ...: the message names the file
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # usage errors (click's, or typer's own copy of click's classes)
        if callable(getattr(exc, "show", None)) and isinstance(
            getattr(exc, "exit_code", None), int
        ):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
