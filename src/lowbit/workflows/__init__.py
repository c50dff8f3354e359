"""The jobs behind the CLI commands, one function each."""

from lowbit.workflows.allocation import pareto_job, plan_job
from lowbit.workflows.export import export_job
from lowbit.workflows.perf import perf_job, profile_job
from lowbit.workflows.sensitivity import sensitivity_job
from lowbit.workflows.spine import eval_job, quantize_job, run_job

__all__ = [
    "eval_job",
    "export_job",
    "pareto_job",
    "perf_job",
    "plan_job",
    "profile_job",
    "quantize_job",
    "run_job",
    "sensitivity_job",
]
