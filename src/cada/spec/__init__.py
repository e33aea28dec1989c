"""The safety spec: statutes, detailed codes and precedents (see :mod:`cada.spec.schema`)."""

from cada.spec.schema import (
    DEFAULT_SPEC_DIR,
    Category,
    Codes,
    Precedent,
    Rule,
    Spec,
    SpecError,
    Statute,
    Verdict,
    load_spec,
)

__all__ = ["DEFAULT_SPEC_DIR", "Category", "Codes", "Precedent", "Rule", "Spec", "SpecError", "Statute",
           "Verdict", "load_spec"]
