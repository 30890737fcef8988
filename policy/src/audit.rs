//! The tamper-evident decision log.
//!
//! Every decision — allowed, denied, approval-required or malformed — becomes one JSON line shaped
//! like OPA's decision log (`decision_id`, `timestamp`, `path`, `input`, `result`, ...) and chained
//! to its predecessor by SHA-256:
//!
//! ```text
//! {"decision_id":"…","timestamp":"2027-01-15T10:00:00.000000Z","path":"overseer/decision",
//!  "input":{"principal":"…","tool":"…","arguments_digest":"…",…},"result":"deny","reasons":["…"],
//!  "policy_revision":"…","mode":"enforce","seq":42,"prev_hash":"…","hash":"…"}
//! ```
//!
//! # The chain
//!
//! `hash` is the lowercase hex SHA-256 of the record's *canonical form*: the exact bytes of the line
//! with its final `,"hash":"…"` member removed (i.e. the record serialised without `hash`, fields in
//! the order above, no whitespace). That form includes `seq` and `prev_hash`, the `hash` of the
//! record before; the very first record has `seq` 1 and `prev_hash` [`GENESIS_HASH`]. Changing any
//! byte of a record breaks its hash; deleting, reordering or inserting records breaks the `seq`
//! sequence and the `prev_hash` link of the record after. [`verify`] names the first broken record.
//! The raw tool arguments are never logged, only their digest.
//!
//! # Writing
//!
//! [`AuditLog`] queues events on a bounded channel to a dedicated writer thread, which builds the
//! chain and writes each record to the configured sinks: a file with size-based rotation (a
//! rotated file keeps the chain: the first record of the new file carries the last hash of the
//! previous one) and/or stdout. See [`AuditLog`] for backpressure and durability.

mod writer;

pub use writer::{
    AuditConfig, AuditError, AuditLog, ChainHead, FileSinkConfig, TryAppendError, rotated_files,
};

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The decision log path of Overseer's decisions (OPA's `path` field).
pub const DECISION_PATH: &str = "overseer/decision";

/// The `prev_hash` of the first record of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Length of the `,"hash":"<64 hex>"}` tail of every line.
const HASH_TAIL_LEN: usize = HASH_PREFIX.len() + 64 + 2;
const HASH_PREFIX: &[u8] = b",\"hash\":\"";

/// The outcome recorded for a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditResult {
    /// The call may proceed.
    Allow,
    /// The call must not proceed.
    Deny,
    /// The call must wait for a human's approval.
    RequireApproval,
    /// The request could not be decided (bad input); it was refused.
    Malformed,
}

/// The mode the deciding policies ran in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditMode {
    /// Decisions are enforced.
    Enforce,
    /// Decisions are recorded; what would have been denied is allowed.
    Audit,
}

/// The summary of a request recorded in the log (OPA's `input`). Never holds raw arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditInput {
    /// The agent that asked (absent when a malformed request named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The tool it wanted to call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The MCP server hosting the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// What the call acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Lowercase hex SHA-256 of the canonical JSON of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_digest: Option<String>,
    /// End user on whose behalf the agent acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Tenant of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The agent's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The caller's trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// One decision to record, as the decision service fills it in. The writer adds `seq`,
/// `prev_hash` and `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// The decision's id (as returned to the caller).
    pub decision_id: String,
    /// When the decision was made.
    pub timestamp: DateTime<Utc>,
    /// The decision log path; [`DECISION_PATH`] for decisions.
    pub path: &'static str,
    /// What was asked.
    pub input: AuditInput,
    /// What was answered.
    pub result: AuditResult,
    /// Why: the deciding policies and rules, rate limits, budgets, or the input error.
    pub reasons: Vec<String>,
    /// The policy revision that decided (absent when none was loaded).
    pub policy_revision: Option<String>,
    /// Enforce or audit mode.
    pub mode: AuditMode,
}

impl AuditEvent {
    /// An event for a decision at `path` [`DECISION_PATH`].
    pub fn decision(
        decision_id: impl Into<String>,
        timestamp: DateTime<Utc>,
        input: AuditInput,
        result: AuditResult,
        mode: AuditMode,
    ) -> Self {
        Self {
            decision_id: decision_id.into(),
            timestamp,
            path: DECISION_PATH,
            input,
            result,
            reasons: Vec::new(),
            policy_revision: None,
            mode,
        }
    }
}

/// The canonical form of a record: everything but `hash`, borrowed from the event.
#[derive(Serialize)]
struct CanonicalRecord<'a> {
    decision_id: &'a str,
    timestamp: &'a str,
    path: &'a str,
    input: &'a AuditInput,
    result: AuditResult,
    reasons: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_revision: Option<&'a str>,
    mode: AuditMode,
    seq: u64,
    prev_hash: &'a str,
}

/// One line of the log, as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// The decision's id.
    pub decision_id: String,
    /// When the decision was made (RFC 3339, UTC, microseconds).
    pub timestamp: DateTime<Utc>,
    /// The decision log path.
    pub path: String,
    /// What was asked.
    pub input: AuditInput,
    /// What was answered.
    pub result: AuditResult,
    /// Why.
    pub reasons: Vec<String>,
    /// The deciding policy revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_revision: Option<String>,
    /// Enforce or audit mode.
    pub mode: AuditMode,
    /// Position in the chain, from 1, continuing across rotated files.
    pub seq: u64,
    /// `hash` of the previous record ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 of this record's canonical form.
    pub hash: String,
}

/// Appends the line for `event` (with its trailing newline) to `out` and returns its hash.
fn encode_record(out: &mut Vec<u8>, event: &AuditEvent, seq: u64, prev_hash: &str) -> [u8; 64] {
    let timestamp = event.timestamp.to_rfc3339_opts(SecondsFormat::Micros, true);
    let canonical = CanonicalRecord {
        decision_id: &event.decision_id,
        timestamp: &timestamp,
        path: event.path,
        input: &event.input,
        result: event.result,
        reasons: &event.reasons,
        policy_revision: event.policy_revision.as_deref(),
        mode: event.mode,
        seq,
        prev_hash,
    };
    let start = out.len();
    // Serialising strings, integers and unit enums into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, &canonical);
    let hash = hex_sha256(&out[start..]);
    out.pop(); // the closing brace; the hash member goes before it
    out.extend_from_slice(HASH_PREFIX);
    out.extend_from_slice(&hash);
    out.extend_from_slice(b"\"}\n");
    hash
}

fn hex_sha256(bytes: &[u8]) -> [u8; 64] {
    let digest = Sha256::digest(bytes);
    let mut hex_out = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(digest, &mut hex_out);
    hex_out
}

fn hex_str(hash: &[u8; 64]) -> &str {
    // Hex digits are ASCII.
    std::str::from_utf8(hash).unwrap_or_default()
}

/// Why a record breaks the chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BreakReason {
    /// The file ends in the middle of a line (a torn write).
    #[error("the record is not terminated by a newline (a torn write)")]
    Unterminated,
    /// The line is not a well-formed record.
    #[error("not a well-formed audit record: {0}")]
    Malformed(String),
    /// The record's content does not match its hash (it was changed).
    #[error("hash mismatch: the record says {stored}, its content hashes to {computed}")]
    HashMismatch {
        /// The `hash` written in the record.
        stored: String,
        /// The hash of the record's canonical form.
        computed: String,
    },
    /// `seq` does not follow the previous record's (a record was removed or inserted).
    #[error("sequence gap: expected seq {expected}, found {found}")]
    SeqGap {
        /// The seq that should come next.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// `prev_hash` is not the previous record's hash.
    #[error("chain broken: prev_hash is {found}, the previous record's hash is {expected}")]
    ChainBroken {
        /// The previous record's hash (or the expected starting hash).
        expected: String,
        /// The record's `prev_hash`.
        found: String,
    },
}

/// Why verification failed: the first broken record, or a file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be read.
    #[error("cannot read audit log {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The first record that breaks the chain.
    #[error("{}:{line}: record{} breaks the chain: {reason}", path.display(), seq.map(|s| format!(" seq {s}")).unwrap_or_default())]
    Broken {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: u64,
        /// The record's `seq`, when it could be read.
        seq: Option<u64>,
        /// What is wrong.
        reason: BreakReason,
    },
}

/// What a successful verification saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of records.
    pub records: u64,
    /// `seq` of the first record (`None` for an empty file).
    pub first_seq: Option<u64>,
    /// `seq` of the last record.
    pub last_seq: Option<u64>,
    /// `prev_hash` of the first record: [`GENESIS_HASH`] when the file starts the chain.
    pub first_prev_hash: Option<String>,
    /// `hash` of the last record: the expected `prev_hash` of the next file. For an empty file,
    /// the expected starting hash passed in (or [`GENESIS_HASH`]).
    pub last_hash: String,
}

impl VerifyReport {
    /// Whether the file starts at the beginning of the chain.
    pub fn starts_at_genesis(&self) -> bool {
        self.first_seq == Some(1) && self.first_prev_hash.as_deref() == Some(GENESIS_HASH)
    }
}

/// The parts of a line the chain needs, after checking its hash.
struct CheckedLine {
    seq: u64,
    prev_hash: String,
    hash: [u8; 64],
}

/// Parses one line (without its newline) and checks its own hash.
fn check_line(line: &[u8]) -> Result<CheckedLine, (Option<u64>, BreakReason)> {
    let record: AuditRecord =
        serde_json::from_slice(line).map_err(|e| (None, BreakReason::Malformed(e.to_string())))?;
    let seq = Some(record.seq);
    let tail_start = line.len().checked_sub(HASH_TAIL_LEN);
    let tail_ok = tail_start.is_some_and(|t| {
        line[t..].starts_with(HASH_PREFIX)
            && line[line.len() - 2..] == *b"\"}"
            && line[t + HASH_PREFIX.len()..line.len() - 2]
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    let Some(tail_start) = tail_start.filter(|_| tail_ok) else {
        return Err((
            seq,
            BreakReason::Malformed(
                "the line does not end with a lowercase hex \"hash\" member".into(),
            ),
        ));
    };
    let mut canonical = Vec::with_capacity(tail_start + 1);
    canonical.extend_from_slice(&line[..tail_start]);
    canonical.push(b'}');
    let computed = hex_sha256(&canonical);
    let mut stored = [0u8; 64];
    stored.copy_from_slice(&line[tail_start + HASH_PREFIX.len()..line.len() - 2]);
    if computed != stored {
        return Err((
            seq,
            BreakReason::HashMismatch {
                stored: hex_str(&stored).to_owned(),
                computed: hex_str(&computed).to_owned(),
            },
        ));
    }
    Ok(CheckedLine {
        seq: record.seq,
        prev_hash: record.prev_hash,
        hash: computed,
    })
}

/// Verifies one log file: every record's hash, `seq` continuity and `prev_hash` linkage. The first
/// record's `prev_hash` is taken as given (see [`VerifyReport::starts_at_genesis`]); use
/// [`verify_from`] to require a start, or [`verify_chain`] for a rotated set.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    verify_from(path, None)
}

/// Like [`verify`], and the first record's `prev_hash` must be `expected_prev_hash` — the
/// `last_hash` of the previous (rotated) file, or [`GENESIS_HASH`] for the first file.
pub fn verify_from(
    path: &Path,
    expected_prev_hash: Option<&str>,
) -> Result<VerifyReport, VerifyError> {
    verify_file(path, expected_prev_hash, &mut |_, _| {})
}

/// [`verify_from`], calling `visit(seq, hash)` for every record that checks out, in order.
fn verify_file(
    path: &Path,
    expected_prev_hash: Option<&str>,
    visit: &mut dyn FnMut(u64, &str),
) -> Result<VerifyReport, VerifyError> {
    let io_err = |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
    let broken = |line, seq, reason| VerifyError::Broken {
        path: path.to_path_buf(),
        line,
        seq,
        reason,
    };
    let mut report = VerifyReport {
        records: 0,
        first_seq: None,
        last_seq: None,
        first_prev_hash: None,
        last_hash: expected_prev_hash.unwrap_or(GENESIS_HASH).to_owned(),
    };
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_err)? == 0 {
            return Ok(report);
        }
        line_no += 1;
        if buf.pop() != Some(b'\n') {
            let seq = serde_json::from_slice::<AuditRecord>(&buf)
                .ok()
                .map(|r| r.seq);
            return Err(broken(line_no, seq, BreakReason::Unterminated));
        }
        let checked = check_line(&buf).map_err(|(seq, reason)| broken(line_no, seq, reason))?;
        let seq = Some(checked.seq);
        match report.last_seq {
            Some(last) if checked.seq != last.wrapping_add(1) => {
                return Err(broken(
                    line_no,
                    seq,
                    BreakReason::SeqGap {
                        expected: last.wrapping_add(1),
                        found: checked.seq,
                    },
                ));
            }
            _ => {}
        }
        let link_expected = if report.records > 0 {
            Some(report.last_hash.as_str())
        } else {
            expected_prev_hash
        };
        if let Some(expected) = link_expected
            && expected != checked.prev_hash
        {
            return Err(broken(
                line_no,
                seq,
                BreakReason::ChainBroken {
                    expected: expected.to_owned(),
                    found: checked.prev_hash,
                },
            ));
        }
        if report.records == 0 {
            report.first_seq = seq;
            report.first_prev_hash = Some(checked.prev_hash);
        }
        report.records += 1;
        report.last_seq = seq;
        report.last_hash = hex_str(&checked.hash).to_owned();
        visit(checked.seq, &report.last_hash);
    }
}

/// Verifies a sequence of files as one chain (e.g. [`rotated_files`] of a log): each file must
/// start with the last hash and the next seq of the one before. The first file's start is taken as
/// given unless `expected_prev_hash` says otherwise. Returns the combined report.
pub fn verify_chain(
    paths: &[PathBuf],
    expected_prev_hash: Option<&str>,
) -> Result<VerifyReport, VerifyError> {
    verify_chain_visiting(paths, expected_prev_hash, |_, _| {})
}

/// [`verify_chain`], calling `visit(seq, hash)` for every record that checks out, in chain order
/// — e.g. to find a record whose hash was kept elsewhere as a checkpoint. Records of a file are
/// visited as they are checked, before a later record of the same file may turn out broken.
pub fn verify_chain_visiting(
    paths: &[PathBuf],
    expected_prev_hash: Option<&str>,
    mut visit: impl FnMut(u64, &str),
) -> Result<VerifyReport, VerifyError> {
    let mut total: Option<VerifyReport> = None;
    for path in paths {
        let expected = total
            .as_ref()
            .map(|t| t.last_hash.as_str())
            .or(expected_prev_hash);
        let report = verify_file(path, expected, &mut visit)?;
        total = Some(match total {
            None => report,
            Some(mut t) => {
                if let (Some(last), Some(first)) = (t.last_seq, report.first_seq)
                    && first != last.wrapping_add(1)
                {
                    return Err(VerifyError::Broken {
                        path: path.clone(),
                        line: 1,
                        seq: Some(first),
                        reason: BreakReason::SeqGap {
                            expected: last.wrapping_add(1),
                            found: first,
                        },
                    });
                }
                if report.records > 0 {
                    t.first_seq = t.first_seq.or(report.first_seq);
                    t.first_prev_hash = t.first_prev_hash.or(report.first_prev_hash);
                    t.last_seq = report.last_seq;
                }
                t.records += report.records;
                t.last_hash = report.last_hash;
                t
            }
        });
    }
    Ok(total.unwrap_or_else(|| VerifyReport {
        records: 0,
        first_seq: None,
        last_seq: None,
        first_prev_hash: None,
        last_hash: expected_prev_hash.unwrap_or(GENESIS_HASH).to_owned(),
    }))
}
