//! Parsers of single flag values, shared by the commands that take them:
//! `--bits-override PATTERN=W[/A]`, `--lr-schedule EPOCH:GAMMA,...`, `--device`,
//! job ids, and the value enums of `--act-quant` and `--rl-task-reward`.

use std::fmt;
use std::str::FromStr;

use camp_proto::spec::{ActQuant, BitsOverride, DeviceRequest, LrStep};
use clap::ValueEnum;

/// `--bits-override PATTERN=W[/A]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BitsOverrideArg(pub BitsOverride);

impl FromStr for BitsOverrideArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (pattern, bits) =
            text.split_once('=').ok_or_else(|| format!("'{text}' is not PATTERN=W[/A] (e.g. 'layer3.*=8/4' or 'fc=fp')"))?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(format!("'{text}': the pattern is empty"));
        }
        let one = |bits: &str| -> Result<Option<u32>, String> {
            let bits = bits.trim();
            if bits.eq_ignore_ascii_case("fp") {
                return Ok(None);
            }
            match bits.parse::<u32>() {
                Ok(b) if (1..=8).contains(&b) || b == 32 => Ok(Some(b)),
                _ => Err(format!("'{text}': bits '{bits}' must be 1..8, 32 or fp")),
            }
        };
        let (wts, acts) = match bits.split_once('/') {
            Some((w, a)) => (one(w)?, one(a)?),
            None => {
                let b = one(bits)?;
                (b, b)
            }
        };
        Ok(BitsOverrideArg(BitsOverride { pattern: pattern.to_owned(), wts, acts }))
    }
}

/// `--lr-schedule`: a multi-step schedule written `80:0.1,120:0.1,160:0.2`, or `none`;
/// `80:0.1` multiplies the lr by 0.1 once 80 epochs have completed (from the 81st on).
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule(pub Vec<LrStep>);

impl FromStr for LrSchedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("none") {
            return Ok(LrSchedule(Vec::new()));
        }
        let parse_step = |item: &str| -> Result<LrStep, String> {
            let (epoch, gamma) = item.split_once(':').ok_or_else(|| format!("'{item}' is not EPOCH:GAMMA (e.g. 80:0.1), or use `none`"))?;
            let epoch: u32 = epoch.trim().parse().map_err(|_| format!("epoch '{}' in '{item}' is not a whole number", epoch.trim()))?;
            let gamma: f64 = gamma.trim().parse().map_err(|_| format!("gamma '{}' in '{item}' is not a number", gamma.trim()))?;
            if epoch == 0 {
                return Err(format!("epoch in '{item}' must be at least 1"));
            }
            if !(gamma.is_finite() && gamma > 0.0) {
                return Err(format!("gamma in '{item}' must be a positive number"));
            }
            Ok(LrStep { epoch, gamma })
        };
        text.split(',').map(|item| parse_step(item.trim())).collect::<Result<_, _>>().map(LrSchedule)
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let steps: Vec<String> = self.0.iter().map(|step| format!("{}:{}", step.epoch, camp_proto::text::exact(step.gamma))).collect();
        f.write_str(&steps.join(","))
    }
}

pub fn parse_device(text: &str) -> Result<DeviceRequest, String> {
    DeviceRequest::parse(text).map_err(|err| err.reason)
}

pub fn job_id(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(format!("'{text}' is not a job id (a positive whole number)")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActQuantArg {
    /// DoReFa: clamp to [0, 1], then quantise (the reference's).
    Dorefa,
    /// PACT: a learned clip per layer.
    Pact,
}

impl From<ActQuantArg> for ActQuant {
    fn from(arg: ActQuantArg) -> Self {
        match arg {
            ActQuantArg::Dorefa => ActQuant::Dorefa,
            ActQuantArg::Pact => ActQuant::Pact,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RlTaskRewardArg {
    /// Spelled as in spec files.
    #[value(name = "per_image")]
    PerImage,
    #[value(name = "batch_mean")]
    BatchMean,
}

impl From<RlTaskRewardArg> for camp_proto::spec::RlTaskReward {
    fn from(arg: RlTaskRewardArg) -> Self {
        match arg {
            RlTaskRewardArg::PerImage => camp_proto::spec::RlTaskReward::PerImage,
            RlTaskRewardArg::BatchMean => camp_proto::spec::RlTaskReward::BatchMean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::tests::parse;

    #[test]
    fn lr_schedule_parses_steps_and_none() {
        let schedule: LrSchedule = "80:0.1, 120:0.1,160:0.2".parse().unwrap();
        assert_eq!(schedule.0, camp_proto::spec::reference_lr_schedule());
        assert_eq!(schedule.to_string(), "80:0.1,120:0.1,160:0.2");
        assert_eq!("none".parse::<LrSchedule>().unwrap().0, vec![]);
        assert_eq!(LrSchedule(vec![]).to_string(), "none");
        assert_eq!("3:10".parse::<LrSchedule>().unwrap().0, vec![LrStep { epoch: 3, gamma: 10.0 }]);
    }

    #[test]
    fn lr_schedule_refuses_bad_steps() {
        for bad in ["", "80", "80:", "x:0.1", "0:0.1", "80:0", "80:-1", "80:nan", "80:0.1,,"] {
            assert!(bad.parse::<LrSchedule>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn bits_overrides_parse() {
        let o = |text: &str| text.parse::<BitsOverrideArg>().map(|o| o.0);
        assert_eq!(o("layer3.*=8/4").unwrap(), BitsOverride { pattern: "layer3.*".into(), wts: Some(8), acts: Some(4) });
        assert_eq!(o("layer1.0.conv1=2").unwrap(), BitsOverride { pattern: "layer1.0.conv1".into(), wts: Some(2), acts: Some(2) });
        assert_eq!(o("fc=fp").unwrap(), BitsOverride { pattern: "fc".into(), wts: None, acts: None });
        assert_eq!(o("conv1=FP/4").unwrap(), BitsOverride { pattern: "conv1".into(), wts: None, acts: Some(4) });
        assert_eq!(o("x=32/fp").unwrap().wts, Some(32));
        for bad in ["layer3", "=4", "a=9", "a=0", "a=4/x", "a=", "a=4/"] {
            assert!(o(bad).is_err(), "{bad:?} parsed");
        }
        let err = parse(&["submit", "qat", "-a", "x", "--bits-override", "fc=12"]).unwrap_err();
        assert!(err.to_string().contains("--bits-override"), "{err}");
    }
}
