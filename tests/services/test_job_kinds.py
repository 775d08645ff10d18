"""The table of job kinds: each kind's entry module exists, what it registers has a registrar,
and its URI fields are exactly the spec fields declared ``Uri`` — the ones the API checks."""

import importlib.util

import pytest
from fastapi.exceptions import RequestValidationError

from contracts.jobs import JOB_TYPES, JobKind
from services.api.validation import validate_spec
from services.job_outputs import REGISTRARS


def test_every_kind_has_an_entry_module_and_a_registrar_for_what_it_registers() -> None:
    assert set(JOB_TYPES) == set(JobKind)
    for kind, job_type in JOB_TYPES.items():
        assert importlib.util.find_spec(job_type.entry_module) is not None, kind
        assert job_type.registers is None or job_type.registers in REGISTRARS, kind
    assert {t.registers for t in JOB_TYPES.values()} - {None} == set(REGISTRARS)


def test_uri_fields_come_from_the_specs() -> None:
    fields = {kind.value: set(t.uri_fields) for kind, t in JOB_TYPES.items()}
    assert fields == {
        "curate": {"input", "output"},
        "tokenize": {"input", "inputs", "output", "tokenizer"},
        "train": {"data", "output"},
        "evaluate": {"checkpoint", "data", "output", "tokenizer", "data_root", "tasks"},
        "tune": {"data", "output"},
        "finetune": {"checkpoint", "data", "output", "tokenizer"},
        "compare": {"output"},  # and runs.*.train, runs.*.evaluate (uri_paths)
    }
    assert JOB_TYPES[JobKind.compare].uri_paths.read == (
        ("runs", "*", "evaluate"),
        ("runs", "*", "train"),
    )


@pytest.mark.parametrize("field", ["data_root", "tokenizer"])
def test_every_uri_field_is_checked(field: str) -> None:
    spec = {"checkpoint": "/m", "output": "/o", "tasks": ["arc_easy"], field: "/data/../../etc"}
    with pytest.raises(RequestValidationError, match=r"'\.\.' is not allowed") as raised:
        validate_spec(JobKind.evaluate, spec, ("body", "spec"))
    assert raised.value.errors()[0]["loc"] == ("body", "spec", field)
