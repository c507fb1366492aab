//! Every bound of the contract, in one place. The coordinator refuses what
//! exceeds them (INVALID_ARGUMENT naming the field), the clients stay within
//! them, and the README's "Securing a cluster" lists them. A request that
//! passes these checks costs the coordinator a bounded amount of time and
//! memory, whatever it holds.

use std::io::Read;
use std::path::Path;

/// The largest gRPC message either side decodes or encodes.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The most metadata (headers) one call may carry.
pub const MAX_METADATA_BYTES: u32 = 16 << 10;
/// Checkpoints are stored in pieces of this size (and uploaded in messages of at most this size).
pub const CHECKPOINT_CHUNK_BYTES: usize = 1 << 20;
/// A download streams messages of this size, read from the store one at a time.
pub const DOWNLOAD_PIECE_BYTES: usize = 64 << 10;

/// Job, pipeline, node, worker and energy-table names, host names, data-set and GPU names.
pub const MAX_NAME_BYTES: usize = 200;
/// User and credential names: `[A-Za-z0-9][A-Za-z0-9._@-]*`, at most this long.
pub const MAX_PRINCIPAL_BYTES: usize = 64;
/// A client's idempotency key (`request_id`).
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Worker labels: how many, and each key's and value's length.
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_KEY_BYTES: usize = 64;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// GPUs and data sets a worker may list.
pub const MAX_WORKER_LIST_ITEMS: usize = 64;
/// Metric names.
pub const MAX_METRIC_NAME_BYTES: usize = 64;
/// One log line (the worker cuts longer lines).
pub const MAX_LOG_LINE_BYTES: usize = 4096;
/// A job's message: why it failed, was cancelled or re-queued (the worker cuts longer ones).
pub const MAX_MESSAGE_TEXT_BYTES: usize = 4096;
/// A checkpoint's metadata, as JSON.
pub const MAX_METADATA_JSON_BYTES: usize = 64 << 10;
/// Per-block shares in a job's result (the deepest architecture has 54 blocks).
pub const MAX_RESULT_BLOCKS: usize = 1_024;
/// One report batch.
pub const MAX_METRICS_PER_BATCH: usize = 10_000;
pub const MAX_LOG_LINES_PER_BATCH: usize = 1_000;
/// Jobs one heartbeat may renew.
pub const MAX_HEARTBEAT_JOBS: usize = 64;
/// Jobs in one pipeline, and the nodes one node may wait for.
pub const MAX_PIPELINE_NODES: usize = 256;
pub const MAX_NODE_PARENTS: usize = 64;
/// Jobs, experiments, workers, metrics and log lines per page of a listing
/// (each page fits in a message: a metric row is at most ~115 bytes, a log line ~4.1 KB).
pub const MAX_JOBS_PAGE: u32 = 1_000;
pub const MAX_METRICS_PAGE: u32 = 20_000;
pub const MAX_LOGS_PAGE: u32 = 400;

/// Bits overrides: how many, and each pattern's length.
pub const MAX_OVERRIDES: usize = 64;
pub const MAX_PATTERN_BYTES: usize = 256;
/// Learning-rate milestones.
pub const MAX_LR_STEPS: usize = 64;
/// Numeric ranges of the spec (the reference trains 200 epochs at batch 128, lr 0.1).
pub const MAX_EPOCHS: u32 = 10_000;
pub const MAX_BATCH_SIZE: u32 = 16_384;
/// Data-parallel ranks of one job (`spec.gpus`) and devices a worker advertises.
pub const MAX_GPUS: u32 = 64;
pub const MAX_LR: f64 = 10.0;
pub const MAX_WEIGHT_DECAY: f64 = 1.0;
pub const MAX_PRINT_FREQ: u32 = 1_000_000;
pub const MAX_IMAGE_LIMIT: u32 = 100_000_000;
pub const MAX_ALPHA: f64 = 1_000.0;
pub const MAX_RL_WEIGHT: f64 = 1_000.0;
pub const MAX_PJ_PER_MAC: f64 = 1e6;
/// A job's attempts.
pub const MAX_ATTEMPTS: u32 = 100;
/// The highest step a metric or checkpoint may name (fits every store's integer).
pub const MAX_STEP: i64 = 1 << 53;

/// Files the clients read (`--compress`, pipeline and spec YAML, energy tables, result rows).
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// What is wrong with a piece of text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} bytes long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("must not contain a NUL character")]
    Nul,
    #[error("must not contain control characters (such as newlines)")]
    Control,
    #[error("may hold only letters, digits and . _ @ - and must start with a letter or digit")]
    Charset,
}

/// Free text (log lines, messages): at most `max` bytes, no NUL.
pub fn check_text(value: &str, max: usize) -> Result<(), TextError> {
    if value.len() > max {
        return Err(TextError::TooLong { len: value.len(), max });
    }
    if value.contains('\0') {
        return Err(TextError::Nul);
    }
    Ok(())
}

/// A name shown in tables (may be empty where a default applies): text without control characters.
pub fn check_name(value: &str, max: usize) -> Result<(), TextError> {
    check_text(value, max)?;
    if value.chars().any(char::is_control) {
        return Err(TextError::Control);
    }
    Ok(())
}

/// What is wrong with a set of labels (a worker's, or those a job requires).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("{count} labels; at most {MAX_LABELS} are allowed")]
    TooMany { count: usize },
    #[error("a label needs a key")]
    EmptyKey,
    #[error("'{text}' is not KEY=VALUE")]
    NotPair { text: String },
    #[error("key '{key}' {error}")]
    Key { key: String, error: TextError },
    #[error("[{key}] {error}")]
    Value { key: String, error: TextError },
}

/// Labels: at most `MAX_LABELS`, each a non-empty key and a value, both names
/// of bounded length. One rule for what workers offer and what jobs require.
pub fn check_labels<'a, M>(labels: &'a M) -> Result<(), LabelError>
where
    &'a M: IntoIterator<Item = (&'a String, &'a String)>,
{
    let mut count = 0;
    for (k, v) in labels {
        count += 1;
        if k.is_empty() {
            return Err(LabelError::EmptyKey);
        }
        check_name(k, MAX_LABEL_KEY_BYTES).map_err(|error| LabelError::Key { key: excerpt(k), error })?;
        check_name(v, MAX_LABEL_VALUE_BYTES).map_err(|error| LabelError::Value { key: excerpt(k), error })?;
    }
    if count > MAX_LABELS {
        return Err(LabelError::TooMany { count });
    }
    Ok(())
}

/// A label as a flag gives it: `KEY=VALUE` (the value may hold `=`).
pub fn parse_label(text: &str) -> Result<(String, String), LabelError> {
    let (k, v) = text.split_once('=').ok_or_else(|| LabelError::NotPair { text: excerpt(text) })?;
    Ok((k.to_string(), v.to_string()))
}

/// A user or credential name: non-empty, `[A-Za-z0-9][A-Za-z0-9._@-]*`, at most 64 bytes.
pub fn check_principal(value: &str) -> Result<(), TextError> {
    if value.is_empty() {
        return Err(TextError::Empty);
    }
    check_text(value, MAX_PRINCIPAL_BYTES)?;
    let ok_first = value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if !(ok_first && ok_rest) {
        return Err(TextError::Charset);
    }
    Ok(())
}

/// A client's value as an error message quotes it: at most 40 characters, so
/// that a refused 9 MB string is not sent back whole.
pub fn excerpt(value: &str) -> String {
    let mut out: String = value.chars().take(40).collect();
    if out.len() < value.len() {
        out.push_str("...");
    }
    out.escape_debug().to_string()
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate_text(text: &str, max: usize) -> String {
    let clean = text.replace('\0', "\u{FFFD}");
    if clean.len() <= max {
        return clean;
    }
    const MARK: &str = " [...]";
    let mut end = max.saturating_sub(MARK.len());
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &clean[..end])
}

/// A file a client reads (YAML, JSON), refused beyond `MAX_CONFIG_FILE_BYTES`
/// without reading further: `--compress /dev/zero` fails at once.
#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("larger than the {max} bytes a file may hold here")]
    TooLarge { max: u64 },
    #[error("not UTF-8 text")]
    NotText,
}

pub fn read_config_file(path: &Path) -> Result<String, ReadFileError> {
    String::from_utf8(read_small_file(path)?).map_err(|_| ReadFileError::NotText)
}

/// The bytes of a small file (a PEM certificate or key, a YAML file), at most
/// `MAX_CONFIG_FILE_BYTES`.
pub fn read_small_file(path: &Path) -> Result<Vec<u8>, ReadFileError> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(ReadFileError::TooLarge { max: MAX_CONFIG_FILE_BYTES });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_refused_for_nul_length_and_control_characters() {
        assert_eq!(check_text("ok", 10), Ok(()));
        assert_eq!(check_text("a\0b", 10), Err(TextError::Nul));
        assert_eq!(check_text(&"x".repeat(11), 10), Err(TextError::TooLong { len: 11, max: 10 }));
        assert_eq!(check_name("two\nlines", 100), Err(TextError::Control));
        assert_eq!(check_text("two\nlines", 100), Ok(()));
    }

    #[test]
    fn principals_are_plain_names() {
        for good in ["alice", "a.b-c_d@lab", "gpu-box-0", "7"] {
            assert_eq!(check_principal(good), Ok(()), "{good}");
        }
        assert_eq!(check_principal(""), Err(TextError::Empty));
        for bad in ["-alice", "a b", "al/ice", "ä", ".hidden"] {
            assert_eq!(check_principal(bad), Err(TextError::Charset), "{bad}");
        }
        assert!(matches!(check_principal(&"a".repeat(65)), Err(TextError::TooLong { .. })));
    }

    #[test]
    fn truncation_keeps_whole_characters_and_marks_the_cut() {
        let long = "é".repeat(100);
        let cut = truncate_text(&long, 51);
        assert!(cut.len() <= 51 && cut.ends_with("[...]"), "{cut}");
        assert_eq!(truncate_text("short", 51), "short");
        assert_eq!(truncate_text("a\0b", 51), "a\u{FFFD}b");
    }

    #[test]
    fn config_files_are_read_up_to_a_cap() {
        let dir = std::env::temp_dir().join(format!("camp-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small.yaml");
        std::fs::write(&small, "a: 1\n").unwrap();
        assert_eq!(read_config_file(&small).unwrap(), "a: 1\n");
        let big = dir.join("big.yaml");
        std::fs::write(&big, vec![b'a'; MAX_CONFIG_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(read_config_file(&big), Err(ReadFileError::TooLarge { .. })));
        // An endless file is refused after the cap, not read to the end.
        assert!(matches!(read_config_file(Path::new("/dev/zero")), Err(ReadFileError::TooLarge { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
