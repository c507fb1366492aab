//! The error of a spec that the contract refuses: which field, and why. A leaf
//! module, so that everything that checks a part of a spec (architecture,
//! quantisation plan, energy table, schedule file) reports alike without
//! depending on the spec's module.

/// A spec field the contract refuses; `field` is the wire field's name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid spec: {field}: {reason}")]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError { field, reason: reason.into() }
}
