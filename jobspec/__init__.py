"""The dgx-music job language: models, safe YAML loading, error reporting, JSON Schema.

Never imports torch: the CLI's `validate` and `schema` stay fast and run anywhere.
"""

from jobspec.errors import ErrorDetail, JobSpecError
from jobspec.loader import load_job_bytes, load_job_file, locate_field
from jobspec.models import (
    DEFAULT_MAX_DURATION,
    MAX_BATCH_JOBS,
    BatchFile,
    Job,
    JobDefaults,
    JobSpec,
    Output,
    Sampling,
)
from jobspec.names import default_job_id
from jobspec.sidecar import (
    SCHEMA_VERSION,
    ErrorInfo,
    ErrorSidecar,
    ErrorType,
    HostInfo,
    ModelInfo,
    OutputInfo,
    ReferenceInfo,
    ResultSidecar,
    Timings,
)
from jobspec.yamlsafe import DEFAULT_MAX_BYTES


def __getattr__(name: str) -> object:
    # Lazy, so that `python -m jobspec.schema` runs a module not already imported by the package.
    if name in ("job_file_schema", "result_schema"):
        from jobspec import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'jobspec' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DURATION",
    "MAX_BATCH_JOBS",
    "SCHEMA_VERSION",
    "BatchFile",
    "ErrorDetail",
    "ErrorInfo",
    "ErrorSidecar",
    "ErrorType",
    "HostInfo",
    "Job",
    "JobDefaults",
    "JobSpec",
    "JobSpecError",
    "ModelInfo",
    "Output",
    "OutputInfo",
    "ReferenceInfo",
    "ResultSidecar",
    "Sampling",
    "Timings",
    "default_job_id",
    "job_file_schema",
    "load_job_bytes",
    "load_job_file",
    "locate_field",
    "result_schema",
]
