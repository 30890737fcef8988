//! The audit writer: a bounded queue, a dedicated thread that builds the chain, and the sinks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{AuditEvent, BreakReason, GENESIS_HASH, check_line, encode_record, hex_str};

/// Most messages the writer takes off the queue before writing them out in one go.
const MAX_BATCH: usize = 1024;
/// On Linux, schedule the calling thread (the writer) `SCHED_BATCH`: the same share of the CPU,
/// but its wake-ups (a record queued while idle, the end of a linger) never preempt the thread
/// that is answering a request on the same CPU — the writer runs when that thread yields its
/// CPU instead of in the middle of a call. Needs no privilege; where it is refused (a seccomp
/// profile), the writer keeps the default policy, which is only slower.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityOsValue,
            ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
        };
        // Niceness 0 (`Os(0)`): the default weight, only the wake-up behaviour changes.
        let _ = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
        );
    }
}

/// Default [`AuditConfig::linger`].
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1);
/// Longest pause between retries of a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The file sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The active log file. Rotated files sit beside it as `<name>.000001`, `<name>.000002`, ...
    /// (oldest first).
    pub path: PathBuf,
    /// Rotate once the active file would grow past this many bytes (a single record larger than
    /// this still goes into one file). Default 100 MiB.
    pub max_bytes: u64,
    /// Keep at most this many rotated files, deleting the oldest; `None` keeps all (default).
    /// Verification of what remains still works from the oldest file kept.
    pub max_rotated_files: Option<usize>,
}

impl FileSinkConfig {
    /// A file sink at `path` with the defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: 100 * 1024 * 1024,
            max_rotated_files: None,
        }
    }
}

/// Where the log goes and how much may queue up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    /// The file sink; its existing content is resumed, not overwritten.
    pub file: Option<FileSinkConfig>,
    /// Also write every record to stdout.
    pub stdout: bool,
    /// Records that may wait in the queue before producers are held back. Default 8192.
    pub queue_capacity: usize,
    /// How long the writer waits after writing a batch before it takes the next one, so that
    /// while records keep coming they are taken in batches without producers waking the writer
    /// for each one (a wake-up is a context switch on the request path). Records are written at
    /// most this much later; an idle writer still wakes for the first record. Default 1 ms;
    /// zero takes every record as soon as it is queued.
    pub linger: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: None,
            stdout: false,
            queue_capacity: 8192,
            linger: DEFAULT_LINGER,
        }
    }
}

/// Why the audit log could not be opened or written to.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The configuration cannot work.
    #[error("invalid audit configuration: {0}")]
    Config(&'static str),
    /// A file operation failed at start-up.
    #[error("cannot {op} audit log {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The existing log ends with a record that cannot be resumed from.
    #[error("cannot resume audit log {}: its last record (line {line}) is broken: {reason}; verify it and move it aside", path.display())]
    Resume {
        /// The file.
        path: PathBuf,
        /// Line number of the broken record.
        line: u64,
        /// What is wrong with it.
        reason: BreakReason,
    },
    /// The writer has stopped; nothing more can be recorded.
    #[error("the audit writer has stopped")]
    Closed,
}

/// Why [`AuditLog::try_append`] did not queue an event; the event is handed back.
#[derive(Debug, thiserror::Error)]
pub enum TryAppendError {
    /// The queue is full; wait with [`AuditLog::append`] or [`AuditLog::append_async`].
    #[error("the audit queue is full")]
    Full(Box<AuditEvent>),
    /// The writer has stopped.
    #[error("the audit writer has stopped")]
    Closed(Box<AuditEvent>),
}

/// The end of the chain: what the next record will link to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// The `seq` the next record gets.
    pub next_seq: u64,
    /// The `hash` of the last record written ([`GENESIS_HASH`] before the first).
    pub last_hash: String,
}

// Events are the hot path; boxing them would cost an allocation per record to save queue slots
// (8192 × ~330 bytes by default) for the rare flush message.
#[allow(clippy::large_enum_variant)]
enum Message {
    Event(AuditEvent),
    Flush(flume::Sender<ChainHead>),
}

#[derive(Debug, Default)]
struct Shared {
    written: AtomicU64,
    write_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn failed(&self, what: &str, path: &Path, e: &io::Error) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(format!("cannot {what} {}: {e}", path.display()));
    }

    fn recovered(&self) {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some() {
            *last = None;
        }
    }
}

/// Runs `op` until it succeeds, backing off from 10 ms to 1 s between tries and reporting the
/// error. Audit records are never dropped: while a sink fails, the queue fills and producers wait.
fn retry<T>(shared: &Shared, what: &str, path: &Path, mut op: impl FnMut() -> io::Result<T>) -> T {
    let mut delay = Duration::from_millis(10);
    let mut failed = false;
    loop {
        match op() {
            Ok(v) => {
                if failed {
                    shared.recovered();
                }
                return v;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                failed = true;
                shared.failed(what, path, &e);
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Writes all of `buf`, continuing after a failure exactly where the last successful write ended,
/// so a retried write never duplicates or tears a record.
fn write_fully(shared: &Shared, path: &Path, out: &mut impl Write, buf: &[u8]) {
    let mut pos = 0;
    while pos < buf.len() {
        let n = retry(shared, "write to", path, || match out.write(&buf[pos..]) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
            other => other,
        });
        pos += n;
    }
}

fn rotated_name(path: &Path, index: u64) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{index:06}"));
    path.with_file_name(name)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The rotated files of the log whose active file is `path`, oldest first, followed by `path`
/// itself when it exists: the order in which [`verify_chain`](super::verify_chain) checks them.
pub fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = rotated_indexed(path)?
        .into_iter()
        .map(|(_, p)| p)
        .collect::<Vec<_>>();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    Ok(files)
}

fn rotated_indexed(path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{base}.");
    let mut found = Vec::new();
    for entry in fs::read_dir(parent_dir(path))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((index, path.with_file_name(name)));
    }
    found.sort();
    Ok(found)
}

/// Reads the last complete line of `file` (of length `len`), scanning backwards. Returns the length
/// of the file up to and including that line's newline, and the line (without newline).
fn last_line(file: &mut File, len: u64) -> io::Result<(u64, Option<Vec<u8>>)> {
    const CHUNK: u64 = 64 * 1024;
    let mut buf: Vec<u8> = Vec::new();
    let mut start = len;
    loop {
        let chunk = CHUNK.min(start);
        start -= chunk;
        let mut piece = vec![0u8; usize::try_from(chunk).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut piece)?;
        piece.extend_from_slice(&buf);
        buf = piece;
        if let Some(end) = buf.iter().rposition(|&b| b == b'\n') {
            let valid_len = start + end as u64 + 1;
            if let Some(begin) = buf[..end].iter().rposition(|&b| b == b'\n') {
                return Ok((valid_len, Some(buf[begin + 1..end].to_vec())));
            }
            if start == 0 {
                return Ok((valid_len, Some(buf[..end].to_vec())));
            }
        } else if start == 0 {
            return Ok((0, None));
        }
    }
}

fn count_lines(file: &mut File, upto: u64) -> io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = io::BufReader::new(file.take(upto));
    let mut lines = 0u64;
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// Finds the chain head in an existing log file, cutting off a torn last line (the tail of a write
/// a crash interrupted; it was never acknowledged as durable). `Ok(None)`: the file holds no record.
fn resume_from(path: &Path, truncate_torn: bool) -> Result<Option<ChainHead>, AuditError> {
    let io_err = |op, source| AuditError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    let mut file = match OpenOptions::new()
        .read(true)
        .write(truncate_torn)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", e)),
    };
    let len = file.metadata().map_err(|e| io_err("inspect", e))?.len();
    let (valid_len, line) = last_line(&mut file, len).map_err(|e| io_err("read", e))?;
    if truncate_torn && valid_len < len {
        file.set_len(valid_len)
            .map_err(|e| io_err("cut the torn last record of", e))?;
        file.sync_all().map_err(|e| io_err("sync", e))?;
    }
    let Some(line) = line else { return Ok(None) };
    match check_line(&line) {
        Ok(checked) => Ok(Some(ChainHead {
            next_seq: checked.seq.wrapping_add(1),
            last_hash: hex_str(&checked.hash).to_owned(),
        })),
        Err((_, reason)) => Err(AuditError::Resume {
            path: path.to_path_buf(),
            line: count_lines(&mut file, valid_len).unwrap_or(0),
            reason,
        }),
    }
}

struct FileSink {
    config: FileSinkConfig,
    file: File,
    size: u64,
    buf: Vec<u8>,
    next_index: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}

impl FileSink {
    fn open(config: FileSinkConfig) -> Result<Self, AuditError> {
        let io_err = |op, source| AuditError::Io {
            path: config.path.clone(),
            op,
            source,
        };
        let file = open_append(&config.path).map_err(|e| io_err("open", e))?;
        let size = file.metadata().map_err(|e| io_err("inspect", e))?.len();
        let next_index = rotated_indexed(&config.path)
            .map_err(|e| io_err("list the rotated files of", e))?
            .last()
            .map_or(1, |(i, _)| i + 1);
        Ok(Self {
            config,
            file,
            size,
            buf: Vec::with_capacity(256 * 1024),
            next_index,
        })
    }

    fn push(&mut self, shared: &Shared, line: &[u8]) {
        let pending = self.size + self.buf.len() as u64;
        if pending > 0 && pending + line.len() as u64 > self.config.max_bytes {
            self.write_out(shared);
            self.rotate(shared);
        }
        self.buf.extend_from_slice(line);
    }

    fn write_out(&mut self, shared: &Shared) {
        if self.buf.is_empty() {
            return;
        }
        write_fully(shared, &self.config.path, &mut self.file, &self.buf);
        self.size += self.buf.len() as u64;
        self.buf.clear();
    }

    fn sync(&mut self, shared: &Shared) {
        self.write_out(shared);
        let file = &self.file;
        retry(shared, "sync", &self.config.path, || file.sync_data());
    }

    /// Closes the active file under the next rotated name and starts an empty one. The chain just
    /// continues: the next record links to the last one of the rotated file.
    fn rotate(&mut self, shared: &Shared) {
        self.sync(shared);
        let path = self.config.path.clone();
        let rotated = rotated_name(&path, self.next_index);
        retry(shared, "rotate", &path, || fs::rename(&path, &rotated));
        self.next_index += 1;
        self.file = retry(shared, "open", &path, || open_append(&path));
        retry(shared, "sync the directory of", &path, || sync_dir(&path));
        self.size = 0;
        if let Some(keep) = self.config.max_rotated_files
            && let Ok(rotated) = rotated_indexed(&path)
        {
            let excess = rotated.len().saturating_sub(keep);
            for (_, old) in rotated.into_iter().take(excess) {
                if let Err(e) = fs::remove_file(&old) {
                    shared.failed("remove the old rotated file", &old, &e);
                }
            }
        }
    }
}

struct StdoutSink {
    buf: Vec<u8>,
}

impl StdoutSink {
    fn write_out(&mut self, shared: &Shared) {
        if self.buf.is_empty() {
            return;
        }
        let path = Path::new("<stdout>");
        let mut out = io::stdout().lock();
        write_fully(shared, path, &mut out, &self.buf);
        retry(shared, "flush", path, || out.flush());
        self.buf.clear();
    }
}

struct Writer {
    rx: flume::Receiver<Message>,
    shared: Arc<Shared>,
    file: Option<FileSink>,
    stdout: Option<StdoutSink>,
    next_seq: u64,
    last_hash: [u8; 64],
    line: Vec<u8>,
    linger: Duration,
}

impl Writer {
    fn head(&self) -> ChainHead {
        ChainHead {
            next_seq: self.next_seq,
            last_hash: hex_str(&self.last_hash).to_owned(),
        }
    }

    fn record(&mut self, event: &AuditEvent) {
        self.line.clear();
        let prev = self.last_hash;
        self.last_hash = encode_record(&mut self.line, event, self.next_seq, hex_str(&prev));
        self.next_seq = self.next_seq.wrapping_add(1);
        if let Some(file) = &mut self.file {
            file.push(&self.shared, &self.line);
        }
        if let Some(stdout) = &mut self.stdout {
            stdout.buf.extend_from_slice(&self.line);
        }
    }

    fn write_out(&mut self, sync: bool) {
        if let Some(file) = &mut self.file {
            if sync {
                file.sync(&self.shared);
            } else {
                file.write_out(&self.shared);
            }
        }
        if let Some(stdout) = &mut self.stdout {
            stdout.write_out(&self.shared);
        }
    }

    /// Runs until the log's sender is dropped and the queue is drained (flume hands out every
    /// queued message before reporting the disconnection); returns the final chain head.
    fn run(mut self) -> ChainHead {
        let mut replies: Vec<flume::Sender<ChainHead>> = Vec::new();
        let mut pending = 0u64;
        loop {
            // Only an idle writer waits on the queue (and is woken by the next producer); a busy
            // one finds the records queued while it wrote or lingered.
            let first = match self.rx.try_recv() {
                Ok(message) => message,
                Err(flume::TryRecvError::Empty) => match self.rx.recv() {
                    Ok(message) => message,
                    Err(flume::RecvError::Disconnected) => break,
                },
                Err(flume::TryRecvError::Disconnected) => break,
            };
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(message) = next.take() {
                match message {
                    Message::Event(event) => {
                        self.record(&event);
                        pending += 1;
                    }
                    Message::Flush(reply) => replies.push(reply),
                }
                taken += 1;
                if taken < MAX_BATCH {
                    next = self.rx.try_recv().ok();
                }
            }
            let sync = !replies.is_empty();
            self.write_out(sync);
            self.shared.written.fetch_add(pending, Ordering::Relaxed);
            pending = 0;
            let head = self.head();
            for reply in replies.drain(..) {
                let _ = reply.send(head.clone());
            }
            // Linger unless the batch was cut short or the queue is full (producers are held
            // back): those records are taken at once.
            if taken < MAX_BATCH && !self.linger.is_zero() && !self.rx.is_full() {
                std::thread::sleep(self.linger);
            }
        }
        self.write_out(true);
        self.head()
    }
}

/// The audit log: a bounded queue in front of a dedicated writer thread.
///
/// # Backpressure, never drops
///
/// Producers put events on a bounded [`flume`] channel of [`AuditConfig::queue_capacity`]. When
/// it is full, [`append`](Self::append) blocks the calling thread and
/// [`append_async`](Self::append_async) waits without blocking the async executor, until the
/// writer has made room; [`try_append`](Self::try_append) hands the event back instead. No event is
/// ever dropped: if a sink fails, the writer retries (10 ms to 1 s backoff, the error shown by
/// [`last_error`](Self::last_error)) while the queue fills and producers wait — decisions stall
/// rather than go unrecorded. flume was chosen because one bounded queue serves both blocking and
/// async producers; the writer is an OS thread so that file IO and fsync never run on (or block)
/// an async runtime.
///
/// # Durability
///
/// The writer takes up to 1024 queued records at a time, hashes them in order and writes them with
/// one `write` per sink: once written they survive a crash of the process. It then lingers
/// [`AuditConfig::linger`] (1 ms) before taking the next batch, so a steady stream of records is
/// written in batches without a wake-up (a context switch) per record; a record is written at most
/// that much later than without it. [`flush`](Self::flush)
/// returns after everything queued before it is written and fsynced (the file's data reaches the
/// disk) — durable against a crash of the machine. Rotation and shutdown also fsync.
///
/// # Resuming
///
/// At start-up the chain continues from the last record of the existing file (or, when that file
/// is empty or missing, of the newest rotated file). A torn last line — the unfinished tail of a
/// write a crash interrupted — is cut off; a complete but broken last record refuses the start
/// ([`AuditError::Resume`]). With stdout alone, each start begins a new chain at seq 1.
#[derive(Debug)]
pub struct AuditLog {
    /// `None` once closed.
    tx: Option<flume::Sender<Message>>,
    thread: Option<JoinHandle<ChainHead>>,
    shared: Arc<Shared>,
    capacity: usize,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Event(e) => f.debug_tuple("Event").field(&e.decision_id).finish(),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl AuditLog {
    /// Opens the sinks, resumes the chain and starts the writer thread.
    pub fn open(config: AuditConfig) -> Result<Self, AuditError> {
        if config.file.is_none() && !config.stdout {
            return Err(AuditError::Config(
                "no sink: configure a file, stdout, or both",
            ));
        }
        if config.queue_capacity == 0 {
            return Err(AuditError::Config("queue_capacity must be at least 1"));
        }
        if config.file.as_ref().is_some_and(|f| f.max_bytes == 0) {
            return Err(AuditError::Config("max_bytes must be at least 1"));
        }
        let mut head = None;
        if let Some(file) = &config.file {
            head = resume_from(&file.path, true)?;
            if head.is_none() {
                let rotated = rotated_indexed(&file.path).map_err(|source| AuditError::Io {
                    path: file.path.clone(),
                    op: "list the rotated files of",
                    source,
                })?;
                if let Some((_, newest)) = rotated.last() {
                    head = resume_from(newest, false)?;
                }
            }
        }
        let head = head.unwrap_or(ChainHead {
            next_seq: 1,
            last_hash: GENESIS_HASH.to_owned(),
        });
        let mut last_hash = [0u8; 64];
        last_hash.copy_from_slice(head.last_hash.as_bytes());

        let (tx, rx) = flume::bounded(config.queue_capacity);
        let shared = Arc::new(Shared::default());
        let writer = Writer {
            rx,
            shared: shared.clone(),
            file: config.file.map(FileSink::open).transpose()?,
            stdout: config.stdout.then(|| StdoutSink {
                buf: Vec::with_capacity(64 * 1024),
            }),
            next_seq: head.next_seq,
            last_hash,
            line: Vec::with_capacity(1024),
            linger: config.linger,
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                yield_to_requests();
                writer.run()
            })
            .map_err(|source| AuditError::Io {
                path: PathBuf::from("<audit writer>"),
                op: "start the writer thread for",
                source,
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            shared,
            capacity: config.queue_capacity,
        })
    }

    fn sender(&self) -> Result<&flume::Sender<Message>, AuditError> {
        self.tx.as_ref().ok_or(AuditError::Closed)
    }

    /// Queues an event, blocking while the queue is full. Do not call from an async task; use
    /// [`append_async`](Self::append_async) there.
    pub fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.sender()?
            .send(Message::Event(event))
            .map_err(|_| AuditError::Closed)
    }

    /// Queues an event, waiting (without blocking the executor) while the queue is full.
    pub async fn append_async(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.sender()?
            .send_async(Message::Event(event))
            .await
            .map_err(|_| AuditError::Closed)
    }

    /// Queues an event if there is room, and hands it back otherwise.
    pub fn try_append(&self, event: AuditEvent) -> Result<(), TryAppendError> {
        let Some(tx) = &self.tx else {
            return Err(TryAppendError::Closed(Box::new(event)));
        };
        tx.try_send(Message::Event(event)).map_err(|e| {
            let full = matches!(e, flume::TrySendError::Full(_));
            let Message::Event(event) = e.into_inner() else {
                unreachable!("try_append only sends events")
            };
            if full {
                TryAppendError::Full(Box::new(event))
            } else {
                TryAppendError::Closed(Box::new(event))
            }
        })
    }

    /// Returns once every event queued before the call is written and fsynced; the chain head
    /// after them.
    pub fn flush(&self) -> Result<ChainHead, AuditError> {
        let (reply, done) = flume::bounded(1);
        self.sender()?
            .send(Message::Flush(reply))
            .map_err(|_| AuditError::Closed)?;
        done.recv().map_err(|_| AuditError::Closed)
    }

    /// [`flush`](Self::flush) for async callers.
    pub async fn flush_async(&self) -> Result<ChainHead, AuditError> {
        let (reply, done) = flume::bounded(1);
        self.sender()?
            .send_async(Message::Flush(reply))
            .await
            .map_err(|_| AuditError::Closed)?;
        done.recv_async().await.map_err(|_| AuditError::Closed)
    }

    fn close(&mut self) -> Result<ChainHead, AuditError> {
        drop(self.tx.take());
        let thread = self.thread.take().ok_or(AuditError::Closed)?;
        thread.join().map_err(|_| AuditError::Closed)
    }

    /// Stops taking events, writes and fsyncs everything queued, stops the writer and returns the
    /// final chain head. Dropping the log does the same (blocking until done).
    pub fn shutdown(mut self) -> Result<ChainHead, AuditError> {
        self.close()
    }

    /// Events waiting in the queue (for the audit queue depth metric).
    pub fn queue_depth(&self) -> usize {
        self.tx.as_ref().map_or(0, flume::Sender::len)
    }

    /// The queue's capacity.
    pub fn queue_capacity(&self) -> usize {
        self.capacity
    }

    /// Records written to the sinks so far.
    pub fn records_written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Failed sink operations so far (each was retried until it succeeded).
    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Ordering::Relaxed)
    }

    /// The error of a sink that is failing right now (cleared once it works again).
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for AuditLog {
    /// Writes and fsyncs what is queued and stops the writer (blocking until it has).
    fn drop(&mut self) {
        let _ = self.close();
    }
}
