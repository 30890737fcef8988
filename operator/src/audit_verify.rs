//! `overseer audit verify`: checks an audit log's hash chain across the files it was rotated
//! into, and whether the chain starts where the caller requires.
//!
//! A file checked alone proves only that its own records link up: its first record's
//! `prev_hash` is taken on trust, so cutting records from the front of the log, or deleting a
//! rotated file, would go unseen. By default the rotated files are checked with the active one
//! as one chain, and the output says where that chain starts; `--from-genesis` and `--since
//! HASH` turn a start elsewhere into a failure.

use std::{
    io,
    path::{Path, PathBuf},
    process::ExitCode,
};

use overseer_policy::audit::{
    BreakReason, VerifyError, VerifyReport, rotated_files, verify_chain_visiting,
};
use serde_json::{Value, json};

use crate::cli::AuditVerifyArgs;

/// An intact chain, and what the caller asked of its start.
#[derive(Debug)]
pub struct Verified {
    /// The files checked, oldest first.
    pub files: Vec<PathBuf>,
    /// The active file does not exist; only rotated files were checked, so the newest records
    /// may be missing.
    pub active_missing: bool,
    /// What the check saw.
    pub report: VerifyReport,
    /// With `--since`: the seq of the record with that hash (the first record's seq − 1 when the
    /// chain starts right after it).
    pub since_seq: Option<u64>,
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Neither the file nor any rotated file exists.
    #[error("no such file, and no rotated files ({}.NNNNNN) beside it", .0.display())]
    NoFiles(PathBuf),
    /// The directory could not be listed.
    #[error("cannot list the rotated files of {}: {source}", path.display())]
    List {
        /// The active file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record breaks the chain or a file cannot be read.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// `--from-genesis`, and the chain starts elsewhere.
    #[error(
        "the chain does not start at the genesis: its first record is seq {first_seq} after hash {first_prev_hash}; the records before it are not in these files (rotated away and pruned, deleted, or cut from the front)"
    )]
    NotFromGenesis {
        /// The intact chain.
        verified: Box<Verified>,
        /// Its first record's seq.
        first_seq: u64,
        /// Its first record's `prev_hash`.
        first_prev_hash: String,
    },
    /// `--since HASH`, and no record of the chain has that hash nor follows it.
    #[error(
        "no record of the chain has hash {hash}, and the chain does not start right after it: the records from that one on are not all here (removed or changed), or the hash belongs to another log"
    )]
    SinceNotFound {
        /// The intact chain.
        verified: Box<Verified>,
        /// The hash asked for.
        hash: String,
    },
}

/// Checks the log `args` names; pure apart from reading the files.
pub fn check(args: &AuditVerifyArgs) -> Result<Verified, Failure> {
    let path = &args.file;
    let files = if args.only_this_file {
        vec![path.clone()]
    } else {
        rotated_files(path).map_err(|source| Failure::List {
            path: path.clone(),
            source,
        })?
    };
    if files.is_empty() {
        return Err(Failure::NoFiles(path.clone()));
    }
    let active_missing = !args.only_this_file && files.last() != Some(path);
    let since = args.since.as_deref();
    let mut since_seq = None;
    let report = verify_chain_visiting(&files, None, |seq, hash| {
        if since_seq.is_none() && since == Some(hash) {
            since_seq = Some(seq);
        }
    })?;
    if let (Some(hash), None, Some(first)) = (since, since_seq, report.first_seq)
        && report.first_prev_hash.as_deref() == Some(hash)
    {
        since_seq = Some(first.saturating_sub(1));
    }
    let verified = Verified {
        files,
        active_missing,
        report,
        since_seq,
    };
    if args.from_genesis
        && let (Some(first_seq), Some(first_prev_hash)) = (
            verified.report.first_seq,
            verified.report.first_prev_hash.clone(),
        )
        && !verified.report.starts_at_genesis()
    {
        return Err(Failure::NotFromGenesis {
            verified: Box::new(verified),
            first_seq,
            first_prev_hash,
        });
    }
    if let Some(hash) = since
        && verified.since_seq.is_none()
    {
        return Err(Failure::SinceNotFound {
            verified: Box::new(verified),
            hash: hash.to_owned(),
        });
    }
    Ok(verified)
}

fn seq_range(report: &VerifyReport) -> String {
    match (report.first_seq, report.last_seq) {
        (Some(first), Some(last)) => format!("seq {first} to {last}"),
        _ => "no records".into(),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// One line saying what an intact chain holds and where it starts.
pub fn summary(path: &Path, v: &Verified) -> String {
    let r = &v.report;
    let mut line = format!(
        "{}: chain intact: {} records in {} ({}), last hash {}",
        path.display(),
        r.records,
        plural(v.files.len(), "file", "files"),
        seq_range(r),
        r.last_hash
    );
    if v.active_missing {
        line.push_str("; the active file is missing, so its newest records are not checked");
    }
    match (r.first_seq, &r.first_prev_hash) {
        _ if r.starts_at_genesis() => line.push_str("; it starts at the genesis"),
        (Some(first), Some(prev)) => line.push_str(&format!(
            "; it starts at seq {first} after hash {prev}, not at the genesis: the records before \
             it are not in these files (--from-genesis or --since HASH make that a failure)"
        )),
        _ => {}
    }
    if let Some(seq) = v.since_seq {
        line.push_str(&format!(
            "; it holds everything since seq {seq}, the record --since names"
        ));
    }
    line
}

fn verified_json(v: &Verified) -> Value {
    let r = &v.report;
    json!({
        "files": v.files,
        "activeFileMissing": v.active_missing,
        "records": r.records,
        "firstSeq": r.first_seq,
        "lastSeq": r.last_seq,
        "firstPrevHash": r.first_prev_hash,
        "lastHash": r.last_hash,
        "startsAtGenesis": r.starts_at_genesis(),
        "sinceSeq": v.since_seq,
    })
}

fn reason_code(reason: &BreakReason) -> &'static str {
    match reason {
        BreakReason::Unterminated => "Unterminated",
        BreakReason::Malformed(_) => "Malformed",
        BreakReason::HashMismatch { .. } => "HashMismatch",
        BreakReason::SeqGap { .. } => "SeqGap",
        BreakReason::ChainBroken { .. } => "ChainBroken",
    }
}

/// The result as one JSON object: `ok` (the exit status is 0), `intact` (every record checked
/// out), `error` when not ok, `broken` naming the first broken record, and the chain's figures
/// when it is intact.
pub fn to_json(result: &Result<Verified, Failure>) -> Value {
    match result {
        Ok(v) => {
            let mut out = verified_json(v);
            out["ok"] = json!(true);
            out["intact"] = json!(true);
            out
        }
        Err(failure) => {
            let mut out = match failure {
                Failure::NotFromGenesis { verified, .. }
                | Failure::SinceNotFound { verified, .. } => {
                    let mut out = verified_json(verified);
                    out["intact"] = json!(true);
                    out
                }
                Failure::Verify(VerifyError::Broken {
                    path,
                    line,
                    seq,
                    reason,
                }) => json!({
                    "intact": false,
                    "broken": {
                        "file": path,
                        "line": line,
                        "seq": seq,
                        "reason": reason_code(reason),
                        "message": reason.to_string(),
                    },
                }),
                _ => json!({"intact": false}),
            };
            out["ok"] = json!(false);
            out["error"] = json!(failure.to_string());
            out
        }
    }
}

/// `overseer audit verify`: prints the result (one line, or one JSON object with `--json`) and
/// exits 0 when the chain is intact and starts where required, 1 otherwise.
pub fn run_audit_verify(args: &AuditVerifyArgs) -> ExitCode {
    let result = check(args);
    if args.json {
        println!("{}", to_json(&result));
    } else {
        match &result {
            Ok(v) => println!("{}", summary(&args.file, v)),
            Err(e @ Failure::Verify(_)) => {
                eprintln!("{}: chain NOT intact: {e}", args.file.display());
            }
            Err(e) => eprintln!("{}: {e}", args.file.display()),
        }
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
