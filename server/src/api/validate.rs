//! Every request field checked against `camp_proto::limits` before anything is
//! stored: a bad field is INVALID_ARGUMENT naming it, and the request costs a
//! bounded amount whatever it holds.

use camp_proto::limits::{self, TextError};
use camp_proto::v1;
use camp_proto::{JobResult, ValidSpec};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::store::{MetricPoint, NewWorker, Outcome, RequestKey};

fn field(field: &str) -> impl FnOnce(TextError) -> ApiError + '_ {
    move |e| ApiError::invalid(field, e)
}

/// Free text: at most `max` bytes, no NUL.
pub fn text(name: &str, value: &str, max: usize) -> ApiResult<()> {
    limits::check_text(value, max).map_err(field(name))
}

/// A name shown in tables: at most 200 bytes, no control characters.
pub fn name(name: &str, value: &str) -> ApiResult<()> {
    limits::check_name(value, limits::MAX_NAME_BYTES).map_err(field(name))
}

/// A name that must be there.
pub fn required_name(name_: &str, value: &str) -> ApiResult<()> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(name_, TextError::Empty));
    }
    name(name_, value)
}

/// At most `max` items.
pub fn count(name: &str, len: usize, max: usize) -> ApiResult<()> {
    if len > max {
        return Err(ApiError::invalid(name, format!("{len} items; at most {max} are allowed")));
    }
    Ok(())
}

/// A page size: 0 means `default`, more than `max` is refused.
pub fn page(name: &str, limit: u32, default: u32, max: u32) -> ApiResult<u32> {
    match limit {
        0 => Ok(default.min(max)),
        n if n > max => Err(ApiError::invalid(name, format!("at most {max}, got {n}"))),
        n => Ok(n),
    }
}

/// A wire spec, validated (its bits overrides each match a module of its network).
pub fn spec(name: &str, wire: Option<&v1::JobSpec>) -> ApiResult<ValidSpec> {
    let wire = wire.ok_or_else(|| ApiError::invalid(name, "missing"))?;
    let prefixed = |e: camp_proto::SpecError| {
        let field = if name == "spec" { e.field.to_string() } else { format!("{name}.{}", e.field) };
        ApiError::Invalid { field, reason: e.reason }
    };
    ValidSpec::from_proto(wire).map_err(prefixed)
}

pub fn max_attempts(requested: u32) -> ApiResult<u32> {
    match requested {
        0 => Ok(crate::api::jobs::DEFAULT_MAX_ATTEMPTS),
        n if n > limits::MAX_ATTEMPTS => Err(ApiError::invalid("max_attempts", format!("at most {}", limits::MAX_ATTEMPTS))),
        n => Ok(n),
    }
}

/// A client's idempotency key, bound to the digest of the request it came
/// with (the request re-encoded with the key cleared): the same key with
/// another request is refused rather than answered with the first result.
pub fn request_key<M: Message + Clone>(request_id: &str, request: &M, clear: impl FnOnce(&mut M)) -> ApiResult<Option<RequestKey>> {
    if request_id.is_empty() {
        return Ok(None);
    }
    limits::check_name(request_id, limits::MAX_REQUEST_ID_BYTES).map_err(field("request_id"))?;
    let mut bare = request.clone();
    clear(&mut bare);
    let sha256 = hex::encode(Sha256::digest(bare.encode_to_vec()));
    Ok(Some(RequestKey { id: request_id.to_string(), sha256 }))
}

/// A registration: the worker as it is now, and the id it kept from an earlier
/// registration, if it sent one.
pub fn register(r: v1::RegisterRequest) -> ApiResult<(NewWorker, Option<uuid::Uuid>)> {
    required_name("name", &r.name)?;
    let previous = match r.worker_id.as_str() {
        "" => None,
        id => Some(uuid::Uuid::parse_str(id).map_err(|_| {
            ApiError::invalid("worker_id", format!("'{}' is not a worker id (a UUID from an earlier registration)", limits::excerpt(id)))
        })?),
    };
    name("hostname", &r.hostname)?;
    if r.device_kind != "cpu" && r.device_kind != "cuda" {
        return Err(ApiError::invalid("device_kind", format!("expected cpu or cuda, got '{}'", limits::excerpt(&r.device_kind))));
    }
    for (list, items) in [("gpus", &r.gpus), ("datasets", &r.datasets)] {
        count(list, items.len(), limits::MAX_WORKER_LIST_ITEMS)?;
        for (i, item) in items.iter().enumerate() {
            name(&format!("{list}[{i}]"), item)?;
        }
    }
    limits::check_labels(&r.labels).map_err(|e| match e {
        limits::LabelError::Value { key, error } => ApiError::invalid(format!("labels[{key}]"), error),
        e => ApiError::invalid("labels", e),
    })?;
    if r.devices > limits::MAX_GPUS {
        return Err(ApiError::invalid("devices", format!("at most {} devices, got {}", limits::MAX_GPUS, r.devices)));
    }
    let labels = serde_json::to_value(&r.labels).expect("a string map always serialises");
    let devices = r.devices.max(1);
    Ok((
        NewWorker { name: r.name, hostname: r.hostname, device_kind: r.device_kind, gpus: r.gpus, datasets: r.datasets, labels, devices },
        previous,
    ))
}

fn step(name: &str, step: i64) -> ApiResult<()> {
    if !(0..=limits::MAX_STEP).contains(&step) {
        return Err(ApiError::invalid(name, format!("must be in 0..={}, got {step}", limits::MAX_STEP)));
    }
    Ok(())
}

fn epoch(name: &str, epoch: u32) -> ApiResult<()> {
    if epoch > limits::MAX_EPOCHS {
        return Err(ApiError::invalid(name, format!("at most {}, got {epoch}", limits::MAX_EPOCHS)));
    }
    Ok(())
}

pub fn report_batch(b: &v1::ReportBatch) -> ApiResult<Vec<MetricPoint>> {
    if b.sequence > i64::MAX as u64 {
        return Err(ApiError::invalid("sequence", format!("at most {}", i64::MAX)));
    }
    epoch("epoch", b.epoch)?;
    count("metrics", b.metrics.len(), limits::MAX_METRICS_PER_BATCH)?;
    count("log_lines", b.log_lines.len(), limits::MAX_LOG_LINES_PER_BATCH)?;
    for line in &b.log_lines {
        text("log_lines", line, limits::MAX_LOG_LINE_BYTES)?;
    }
    b.metrics
        .iter()
        .map(|m| {
            if m.name.is_empty() {
                return Err(ApiError::invalid("metrics.name", TextError::Empty));
            }
            limits::check_name(&m.name, limits::MAX_METRIC_NAME_BYTES).map_err(field("metrics.name"))?;
            step("metrics.step", m.step)?;
            epoch("metrics.epoch", m.epoch)?;
            Ok(MetricPoint { name: m.name.clone(), value: m.value, step: m.step, epoch: m.epoch })
        })
        .collect()
}

/// A JSON object of at most `max` bytes ("" = none).
fn json_object(name: &str, text: &str, max: usize) -> ApiResult<Option<serde_json::Value>> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > max {
        return Err(ApiError::invalid(name, TextError::TooLong { len: text.len(), max }));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ApiError::invalid(name, format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(name, "must be a JSON object"));
    }
    if holds_nul(&value) {
        return Err(ApiError::invalid(name, TextError::Nul));
    }
    Ok(Some(value))
}

/// Whether a key or string of `value` holds a NUL (`\u0000` in the text), which
/// PostgreSQL's jsonb cannot store (serde_json bounds the nesting).
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// What a checkpoint header promises, checked: its metadata and its top-1 (None: not evaluated).
#[derive(Debug)]
pub struct CheckedHeader {
    pub metadata: serde_json::Value,
    pub top1: Option<f64>,
}

pub fn checkpoint_header(h: &v1::CheckpointHeader, max_bytes: u64) -> ApiResult<CheckedHeader> {
    if h.size == 0 {
        return Err(ApiError::invalid("size", "a checkpoint cannot be empty"));
    }
    if h.size > max_bytes {
        return Err(ApiError::invalid(
            "size",
            format!("{} bytes is over this coordinator's limit of {max_bytes} (--max-checkpoint-mib)", h.size),
        ));
    }
    if h.sha256.len() != 64 || !h.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid("sha256", "expected 64 hex digits"));
    }
    epoch("epoch", h.epoch)?;
    step("step", h.step)?;
    let top1 = if h.top1.is_nan() {
        None
    } else if (0.0..=1.0).contains(&h.top1) {
        Some(h.top1)
    } else {
        return Err(ApiError::invalid("top1", format!("must be in [0, 1] (or NaN: not evaluated), got {}", h.top1)));
    };
    let metadata =
        json_object("metadata_json", &h.metadata_json, limits::MAX_METADATA_JSON_BYTES)?.unwrap_or_else(|| serde_json::json!({}));
    Ok(CheckedHeader { metadata, top1 })
}

pub fn finish(r: &v1::FinishRequest) -> ApiResult<(Outcome, Option<&JobResult>)> {
    let outcome = match v1::Outcome::try_from(r.outcome) {
        Ok(v1::Outcome::Succeeded) => Outcome::Succeeded,
        Ok(v1::Outcome::Failed) => Outcome::Failed,
        Ok(v1::Outcome::Cancelled) => Outcome::Cancelled,
        Ok(v1::Outcome::Released) => Outcome::Released,
        Ok(v1::Outcome::Retry) => Outcome::Retry,
        _ => return Err(ApiError::invalid("outcome", "must be succeeded, failed, cancelled, released or retry")),
    };
    text("message", &r.message, limits::MAX_MESSAGE_TEXT_BYTES)?;
    if let Some(result) = &r.result {
        result.check().map_err(|e| ApiError::invalid(format!("result.{}", e.field), e.reason))?;
    }
    Ok((outcome, r.result.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of<T: std::fmt::Debug>(r: ApiResult<T>) -> String {
        match r.unwrap_err() {
            ApiError::Invalid { field, .. } => field,
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn worker_registrations_are_bounded() {
        let ok = v1::RegisterRequest { name: "w".into(), device_kind: "cpu".into(), ..Default::default() };
        register(ok.clone()).unwrap();
        assert_eq!(field_of(register(v1::RegisterRequest { name: "a\0b".into(), ..ok.clone() })), "name");
        assert_eq!(field_of(register(v1::RegisterRequest { name: " ".into(), ..ok.clone() })), "name");
        assert_eq!(field_of(register(v1::RegisterRequest { hostname: "x".repeat(1000), ..ok.clone() })), "hostname");
        assert_eq!(field_of(register(v1::RegisterRequest { gpus: vec!["g".into(); 65], ..ok.clone() })), "gpus");
        assert_eq!(field_of(register(v1::RegisterRequest { devices: 65, ..ok.clone() })), "devices");
        assert_eq!(field_of(register(v1::RegisterRequest { datasets: vec!["c\0".into()], ..ok.clone() })), "datasets[0]");
        let labels = (0..33).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert_eq!(field_of(register(v1::RegisterRequest { labels, ..ok.clone() })), "labels");
        assert_eq!(field_of(register(v1::RegisterRequest { worker_id: "w1".into(), ..ok.clone() })), "worker_id");
        let id = uuid::Uuid::new_v4();
        assert_eq!(register(v1::RegisterRequest { worker_id: id.to_string(), ..ok.clone() }).unwrap().1, Some(id));
        assert_eq!(register(ok.clone()).unwrap().1, None);
    }

    #[test]
    fn report_batches_are_bounded() {
        let metric = v1::Metric { name: "loss".into(), value: f64::NAN, step: 1, epoch: 1, ..Default::default() };
        let ok = v1::ReportBatch { metrics: vec![metric.clone()], log_lines: vec!["hello".into()], ..Default::default() };
        report_batch(&ok).unwrap();
        let bad = |m: v1::Metric| v1::ReportBatch { metrics: vec![m], ..Default::default() };
        assert_eq!(field_of(report_batch(&bad(v1::Metric { name: "lo\0ss".into(), ..metric.clone() }))), "metrics.name");
        assert_eq!(field_of(report_batch(&bad(v1::Metric { name: String::new(), ..metric.clone() }))), "metrics.name");
        assert_eq!(field_of(report_batch(&bad(v1::Metric { step: -1, ..metric.clone() }))), "metrics.step");
        assert_eq!(field_of(report_batch(&bad(v1::Metric { epoch: u32::MAX, ..metric.clone() }))), "metrics.epoch");
        assert_eq!(field_of(report_batch(&v1::ReportBatch { log_lines: vec!["x".repeat(5000)], ..Default::default() })), "log_lines");
        assert_eq!(field_of(report_batch(&v1::ReportBatch { sequence: u64::MAX, ..Default::default() })), "sequence");
    }

    #[test]
    fn checkpoint_headers_need_bytes_a_hash_and_a_top1_in_range() {
        let ok = v1::CheckpointHeader { sha256: "a".repeat(64), size: 10, top1: 0.5, metadata_json: "{}".into(), ..Default::default() };
        assert_eq!(checkpoint_header(&ok, 100).unwrap().top1, Some(0.5));
        assert_eq!(checkpoint_header(&v1::CheckpointHeader { top1: f64::NAN, ..ok.clone() }, 100).unwrap().top1, None);
        assert_eq!(field_of(checkpoint_header(&v1::CheckpointHeader { top1: 5.0, ..ok.clone() }, 100)), "top1");
        assert_eq!(field_of(checkpoint_header(&v1::CheckpointHeader { size: 0, ..ok.clone() }, 100)), "size");
        assert_eq!(field_of(checkpoint_header(&v1::CheckpointHeader { size: 101, ..ok.clone() }, 100)), "size");
        assert_eq!(field_of(checkpoint_header(&v1::CheckpointHeader { sha256: "zz".into(), ..ok.clone() }, 100)), "sha256");
        assert_eq!(field_of(checkpoint_header(&v1::CheckpointHeader { metadata_json: "[1]".into(), ..ok.clone() }, 100)), "metadata_json");
    }

    #[test]
    fn finishing_messages_and_results_are_bounded() {
        let result = v1::JobResult { best_top1: 0.5, energy_table: "t".into(), ..Default::default() };
        let ok = v1::FinishRequest { outcome: v1::Outcome::Succeeded as i32, result: Some(result.clone()), ..Default::default() };
        finish(&ok).unwrap();
        assert_eq!(finish(&v1::FinishRequest { outcome: v1::Outcome::Retry as i32, ..ok.clone() }).unwrap().0, Outcome::Retry);
        assert_eq!(field_of(finish(&v1::FinishRequest { outcome: 99, ..ok.clone() })), "outcome");
        assert_eq!(field_of(finish(&v1::FinishRequest { message: "a\0".into(), ..ok.clone() })), "message");
        let bad = |result| field_of(finish(&v1::FinishRequest { result: Some(result), ..ok.clone() }));
        assert_eq!(bad(v1::JobResult { best_top1: f64::NAN, ..result.clone() }), "result.best_top1");
        assert_eq!(bad(v1::JobResult { block_fullbit_shares: vec![0.5; 70_000], ..result.clone() }), "result.block_fullbit_shares");
    }

    #[test]
    fn request_keys_bind_the_request() {
        let a = v1::SubmitJobRequest { name: "a".into(), request_id: "k1".into(), ..Default::default() };
        let b = v1::SubmitJobRequest { name: "b".into(), request_id: "k1".into(), ..Default::default() };
        let key = |r: &v1::SubmitJobRequest| request_key(&r.request_id, r, |m| m.request_id.clear()).unwrap().unwrap();
        assert_eq!(key(&a), key(&a.clone()));
        assert_ne!(key(&a).sha256, key(&b).sha256);
        assert!(request_key("", &a, |_| {}).unwrap().is_none());
        assert_eq!(field_of(request_key("x\ny", &a, |_| {})), "request_id");
    }
}
