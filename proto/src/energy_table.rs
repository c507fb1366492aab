//! The energy table a job charges its MACs at (docs/method.md, "Energy"): a
//! named set of pJ figures, part of the spec, with its bounds. The energy model
//! that uses it is `energy`.

use serde::{Deserialize, Serialize};

use crate::limits::{check_name, MAX_NAME_BYTES, MAX_PJ_PER_MAC};
use crate::spec_error::{invalid, SpecError};
use crate::v1;

/// Energy per MAC: fp32, and b-bit integer = mult * (b/8)^2 + add * (b/8)
/// (an 8-bit multiplier scales with b^2, an adder with b).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyTable {
    pub name: String,
    pub fp32_pj: f64,
    pub int8_mult_pj: f64,
    pub int8_add_pj: f64,
}

impl Default for EnergyTable {
    /// Horowitz, ISSCC 2014, 45 nm: fp32 3.7 pJ mult + 0.9 pJ add; int8 0.2 pJ mult, 0.03 pJ add.
    fn default() -> Self {
        EnergyTable { name: "horowitz-45nm".into(), fp32_pj: 4.6, int8_mult_pj: 0.2, int8_add_pj: 0.03 }
    }
}

impl EnergyTable {
    /// pJ per MAC at `bits` weight bits (None = full precision).
    pub fn pj_per_mac(&self, bits: Option<u32>) -> f64 {
        match bits {
            None | Some(32) => self.fp32_pj,
            Some(b) => {
                let r = b as f64 / 8.0;
                self.int8_mult_pj * r * r + self.int8_add_pj * r
            }
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.trim().is_empty() {
            return Err(invalid("energy_table", "the table needs a name (every report names it)"));
        }
        check_name(&self.name, MAX_NAME_BYTES).map_err(|e| invalid("energy_table", format!("name {e}")))?;
        for (key, v) in [("fp32_pj", self.fp32_pj), ("int8_mult_pj", self.int8_mult_pj), ("int8_add_pj", self.int8_add_pj)] {
            if !(v.is_finite() && v > 0.0 && v <= MAX_PJ_PER_MAC) {
                return Err(invalid("energy_table", format!("{key} must be a positive number of at most {}, got {v}", MAX_PJ_PER_MAC)));
            }
        }
        Ok(())
    }

    pub fn from_proto(p: &v1::EnergyTable) -> Self {
        EnergyTable { name: p.name.clone(), fp32_pj: p.fp32_pj, int8_mult_pj: p.int8_mult_pj, int8_add_pj: p.int8_add_pj }
    }

    pub fn to_proto(&self) -> v1::EnergyTable {
        v1::EnergyTable { name: self.name.clone(), fp32_pj: self.fp32_pj, int8_mult_pj: self.int8_mult_pj, int8_add_pj: self.int8_add_pj }
    }
}
