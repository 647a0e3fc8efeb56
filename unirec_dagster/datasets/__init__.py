"""Dataset specs and the readers that turn source files into string records."""

from unirec_dagster.datasets.readers import RawRecords, Reject, read_records
from unirec_dagster.datasets.spec import DatasetSpec, SpecError, VerbsSpec, last_complete_week, load_spec

__all__ = ["DatasetSpec", "RawRecords", "Reject", "SpecError", "VerbsSpec", "last_complete_week", "load_spec", "read_records"]
