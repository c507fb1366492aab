//! How numbers and fields are written where a program reads them back: CSV
//! cells, spec values and the JSON of `--json` and the dashboard's API. One
//! rule each, for every client (the CLI, the coordinator's web pages).

use std::borrow::Cow;

use serde_json::Value;

/// A CSV field, quoted when it holds a comma, quote or line break.
pub fn csv_field(text: &str) -> Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", text.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(text)
    }
}

/// A value exactly (it parses back to the same f64), for CSV and spec fields:
/// Rust's shortest form, in exponent form when it is huge or tiny (`1e308`,
/// `1e-300`, `0.00001`, `0.1`); `NaN`, `inf`, `-inf` as such.
pub fn exact(value: f64) -> String {
    let magnitude = value.abs();
    if value.is_finite() && value != 0.0 && !(1e-5..1e16).contains(&magnitude) {
        format!("{value:e}")
    } else {
        value.to_string()
    }
}

/// Every f64 that goes into `--json` goes through here: a JSON number when
/// finite, else the string `"NaN"`, `"inf"` or `"-inf"` (JSON has no such
/// numbers, and serde_json would print `null`).
pub fn json_f64(value: f64) -> Value {
    if value.is_nan() {
        Value::from("NaN")
    } else if value == f64::INFINITY {
        Value::from("inf")
    } else if value == f64::NEG_INFINITY {
        Value::from("-inf")
    } else {
        Value::from(value)
    }
}

/// `json_f64`, `null` for `None`.
pub fn json_opt_f64(value: Option<f64>) -> Value {
    value.map_or(Value::Null, json_f64)
}

/// The f64 `json_f64` wrote: a number, or one of the strings `NaN`, `inf`, `-inf`.
pub fn f64_from_json(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => match text.as_str() {
            "NaN" => Some(f64::NAN),
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// `#[serde(with = "camp_proto::text::json_opt_f64_serde", default)]` for an
/// `Option<f64>` field: written by `json_opt_f64`, read back by `f64_from_json`.
pub mod json_opt_f64_serde {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
        super::json_opt_f64(*value).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
        let value = Value::deserialize(deserializer)?;
        if value.is_null() {
            return Ok(None);
        }
        super::f64_from_json(&value)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected a number, \"NaN\", \"inf\" or \"-inf\", got {value}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn exact_values_read_back() {
        assert_eq!(exact(1e308), "1e308");
        assert_eq!(exact(1e-300), "1e-300");
        assert_eq!(exact(1.5e-7), "1.5e-7");
        assert_eq!(exact(0.00001), "0.00001");
        assert_eq!((exact(0.1), exact(55.25), exact(0.0)), ("0.1".into(), "55.25".into(), "0".into()));
        assert_eq!(exact(f64::NAN), "NaN");
        for value in [1e308, 1e-300, 1.5e-7, 0.1, 123.456, f64::MAX, f64::MIN_POSITIVE] {
            assert_eq!(exact(value).parse::<f64>().unwrap(), value, "{value:e} round-trips");
        }
    }

    #[test]
    fn json_numbers_keep_nan_and_infinities_as_strings() {
        assert_eq!(json_f64(f64::NAN), Value::from("NaN"));
        assert_eq!(json_f64(f64::INFINITY), Value::from("inf"));
        assert_eq!(json_f64(f64::NEG_INFINITY), Value::from("-inf"));
        assert_eq!(json_f64(0.25), serde_json::json!(0.25));
        assert_eq!(json_f64(1e308).to_string(), "1e+308", "compact, not 309 digits");
        assert_eq!(json_opt_f64(None), Value::Null);
        for value in [f64::INFINITY, f64::NEG_INFINITY, 1e-300] {
            assert_eq!(f64_from_json(&json_f64(value)), Some(value));
        }
        assert!(f64_from_json(&json_f64(f64::NAN)).unwrap().is_nan());
        assert_eq!(f64_from_json(&Value::from("lots")), None);
    }
}
