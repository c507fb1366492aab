//! A spec the contract accepted. `ValidSpec` can only be made by checking a
//! spec whole (every field's range, then the quantisation plan its override
//! patterns compile to and the energy plan they must match), so a function that takes one never checks again:
//! each process checks a spec once where it enters — the CLI when it builds
//! one from flags or a file (early errors offline), the coordinator at submit
//! (the authority), the worker when a claim or a spec file hands it one — and
//! the engine trusts the type.

use std::ops::Deref;

use serde::Serialize;

use crate::energy;
use crate::quant::BitsPlan;
use crate::spec::JobSpec;
use crate::spec_error::SpecError;
use crate::v1;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ValidSpec(JobSpec);

impl ValidSpec {
    /// Checks every field (the first wrong one is named in the error),
    /// compiles every override pattern (length, syntax, control characters)
    /// and plans the network's energy, which needs each pattern to match one
    /// of its modules. A spec that passes costs a bounded amount to store,
    /// plan and train.
    pub fn new(spec: JobSpec) -> Result<Self, SpecError> {
        spec.check_fields()?;
        BitsPlan::for_spec(&spec)?;
        energy::report(&spec)?;
        Ok(ValidSpec(spec))
    }

    /// Reads a wire spec (the stage's defaults for unset knobs) and checks it.
    pub fn from_proto(p: &v1::JobSpec) -> Result<Self, SpecError> {
        Self::new(JobSpec::read_proto(p)?)
    }

    pub fn into_inner(self) -> JobSpec {
        self.0
    }
}

impl Deref for ValidSpec {
    type Target = JobSpec;
    fn deref(&self) -> &JobSpec {
        &self.0
    }
}

impl AsRef<JobSpec> for ValidSpec {
    fn as_ref(&self) -> &JobSpec {
        &self.0
    }
}
