//! Mapping evaluation in separate processes, so that no mapping and no
//! submission can crash, hang or exhaust the gateway.
//!
//! jaq has no recursion, time or memory limit: deep recursion overflows
//! the stack and aborts the process, and an expression over hostile data
//! can loop or allocate without end. So every evaluation runs in a pool of
//! `amtsbote mapping-sandbox` processes: each has an address-space limit
//! (`memory_limit_mib`), no core dumps and an empty environment, and the
//! parent kills it when an evaluation outlives `time_limit`. A crash or a
//! kill costs one process (started again on demand) and turns into a
//! mapping error for that one submission, which is parked.
//!
//! The parent sends each process a mapping's [`MappingSource`] once per
//! version, then render requests that name the version. Frames are
//! `[tag: u8][length: u32 LE][payload]`. A render request carries the
//! submission and, after it, the raw bytes of stored attachments the
//! mapping reads as `content` (the sandbox encodes them; the server process
//! never holds their base64). A package answer names stored attachments by
//! blob instead of returning their bytes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use jaq_json::Val;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::{Mapping, MappingSource, PackageFormat, PackedContent, PackedFile, RenderError, Rendition, mapping_error};
use crate::domain::BlobId;

/// How mapping evaluations are bounded (the `sandbox` section of the
/// configuration).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Evaluations at once, each in its own process (default: the number
    /// of CPUs).
    #[serde(default)]
    pub processes: Option<usize>,
    /// Requests sent to a process at once (default 4): while it evaluates
    /// one, the next waits in its pipe, so it need not sleep in between.
    /// A crash or time-out fails only the request being evaluated; the
    /// others are sent again to another process. 1 sends one at a time.
    #[serde(default = "default_requests_per_process")]
    pub requests_per_process: usize,
    /// Longest one evaluation may take (default `5s`).
    #[serde(default = "default_time_limit", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub time_limit: Duration,
    /// Address-space limit of each sandbox process in MiB (default 1024).
    #[serde(default = "default_memory_limit")]
    pub memory_limit_mib: u64,
    /// Largest output of one evaluation in MiB (default 64).
    #[serde(default = "default_output_limit")]
    pub output_limit_mib: u64,
    /// The executable started as `<program> mapping-sandbox` (default: the
    /// running amtsbote executable).
    #[serde(default)]
    pub program: Option<PathBuf>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            processes: None,
            requests_per_process: default_requests_per_process(),
            time_limit: default_time_limit(),
            memory_limit_mib: default_memory_limit(),
            output_limit_mib: default_output_limit(),
            program: None,
        }
    }
}

fn default_requests_per_process() -> usize {
    4
}
fn default_time_limit() -> Duration {
    Duration::from_secs(5)
}
fn default_memory_limit() -> u64 {
    1024
}
fn default_output_limit() -> u64 {
    64
}

/// Why an evaluation gave no payload.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EvalError {
    /// The mapping failed on this submission (including crashes and the
    /// limits): parked as a mapping error.
    #[error(transparent)]
    Mapping(#[from] RenderError),
    /// The sandbox could not be started or spoken to: worth retrying.
    #[error("mapping sandbox unavailable: {0}")]
    Unavailable(String),
    /// The message is not JSON.
    #[error("message is not JSON ({0})")]
    Undecodable(String),
}

mod tag {
    pub const LOAD: u8 = b'L';
    pub const RENDER: u8 = b'R';
    pub const LOADED: u8 = b'K';
    /// The request made no sense (a bug, not the mapping's fault).
    pub const PROTOCOL_ERROR: u8 = b'P';
    pub const DOCUMENT: u8 = b'D';
    pub const PACKAGE: u8 = b'F';
    pub const RENDER_ERROR: u8 = b'E';
    pub const UNDECODABLE: u8 = b'U';
    pub const LOAD_ERROR: u8 = b'X';
}

#[derive(Serialize, Deserialize)]
struct RenderHeader {
    version: String,
    now: i64,
    /// Stored attachments whose bytes follow the submission, in order.
    #[serde(default)]
    attached: Vec<Attached>,
}

/// The bytes of the submission's attachment number `index`, `len` long:
/// its `content` for the mapping.
#[derive(Serialize, Deserialize)]
struct Attached {
    index: usize,
    len: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DocumentHeader {
    content_type: String,
}

#[derive(Serialize, Deserialize)]
struct PackageHeader {
    format: PackageFormat,
    modified: i64,
    files: Vec<FileHeader>,
}

/// A file of a package: `len` bytes in the answer, or a stored attachment.
#[derive(Serialize, Deserialize)]
struct FileHeader {
    path: String,
    len: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blob: Option<BlobId>,
}

/// The pool of sandbox processes.
///
/// Each process ([`Lane`]) takes up to `requests_per_process` requests at
/// once and answers them in order: while it evaluates one, the next
/// already waits in its pipe, so it need not sleep between them. The time
/// limit runs for the request at the head of a lane (the one being
/// evaluated), from when it got there; a crash or time-out is that
/// request's, and the requests behind it, which the process never
/// started, are sent again to another process.
pub struct Sandbox {
    settings: SandboxSettings,
    program: PathBuf,
    processes: usize,
    permits: Semaphore,
    lanes: Mutex<Vec<Arc<Lane>>>,
}

/// How often a request is sent again after the process it waited in
/// ended before reaching it (each time because another request crashed
/// or outran the time limit there).
const SEND_ATTEMPTS: usize = 3;

/// One sandbox process and the requests sent to it.
struct Lane {
    state: Mutex<LaneState>,
    /// Wakes the lane's reader when a request is queued, so that the time
    /// limit of a new head starts running.
    queued: Notify,
}

struct LaneState {
    /// Frames to the process's stdin, written in order by the lane's
    /// writer; `None` once the process has ended (or is ending).
    writer: Option<mpsc::UnboundedSender<Vec<Bytes>>>,
    /// Mapping versions sent to this process (a LOAD frame went before).
    loaded: HashSet<String>,
    /// Requests written or about to be, in the order of their answers.
    pending: VecDeque<Pending>,
}

struct Pending {
    /// Whether a LOAD frame went before this request, so that its answer
    /// comes first.
    load: bool,
    queued_at: Instant,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    Answered(Result<Rendition, EvalError>),
    /// The process ended while it evaluated this request; told to the
    /// requester, who logs it in the submission's context.
    Ended(End, Option<std::process::ExitStatus>),
    /// The process ended before it started on this request.
    Displaced,
}

/// Why a lane's process ended.
enum End {
    /// Its stdin was closed with nothing pending: the pool let it go.
    Released,
    Crashed(std::io::Error),
    TimedOut,
    LoadFailed(String),
    /// It sent an answer nobody asked for.
    Unasked,
}

impl Sandbox {
    pub fn new(settings: SandboxSettings) -> std::io::Result<Arc<Self>> {
        let program = match &settings.program {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        let processes = settings.processes.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
        let permits = Semaphore::new(processes.saturating_mul(settings.requests_per_process.max(1)));
        Ok(Arc::new(Self { settings, program, processes, permits, lanes: Mutex::new(Vec::new()) }))
    }

    /// Renders `submission` (the queued message's bytes) with `mapping`;
    /// `attached` are the bytes of stored attachments (by index) that the
    /// mapping reads as their `content`.
    pub async fn render(&self, mapping: &Mapping, submission: &[u8], attached: &[(usize, Bytes)], now: i64) -> Result<Rendition, EvalError> {
        let _permit = self.permits.acquire().await.map_err(|_| EvalError::Unavailable("the sandbox is closed".into()))?;
        let header = RenderHeader {
            version: mapping.version().to_owned(),
            now,
            attached: attached.iter().map(|(index, bytes)| Attached { index: *index, len: bytes.len() }).collect(),
        };
        let header = serde_json::to_vec(&header).expect("serializes");
        let mut parts = vec![Bytes::from(header), Bytes::from_static(b"\n"), Bytes::copy_from_slice(submission)];
        // The attachments' bytes are shared, not copied, while the request
        // waits for its process.
        parts.extend(attached.iter().map(|(_, bytes)| bytes.clone()));
        let request = frame(tag::RENDER, parts).map_err(|e| EvalError::Unavailable(e.to_string()))?;
        for _ in 0..SEND_ATTEMPTS {
            let (reply, answer) = oneshot::channel();
            self.send(mapping, request.clone(), reply)?;
            match answer.await {
                Ok(Reply::Answered(answer)) => return answer,
                Ok(Reply::Ended(end, status)) => return Err(self.ended(mapping, end, status)),
                // Sent again, to a process that is still there.
                Ok(Reply::Displaced) | Err(_) => continue,
            }
        }
        Err(EvalError::Unavailable(format!(
            "the sandbox processes ended {SEND_ATTEMPTS} times before they reached this request (other requests crashed them)"
        )))
    }

    /// What the end of the process that evaluated a request means for it.
    fn ended(&self, mapping: &Mapping, end: End, status: Option<std::process::ExitStatus>) -> EvalError {
        match end {
            End::Crashed(io) => {
                tracing::warn!(event = "sandbox_crashed", mapping = mapping.file(), status = ?status, error = %io,
                    "a mapping evaluation ended its sandbox process");
                EvalError::Mapping(mapping_error(
                    mapping,
                    format!(
                        "the evaluation crashed (stack overflow from deep recursion, or more than the memory limit of {} MiB)",
                        self.settings.memory_limit_mib
                    ),
                ))
            }
            End::TimedOut => {
                let limit = self.settings.time_limit;
                tracing::warn!(event = "sandbox_timeout", mapping = mapping.file(), limit_ms = limit.as_millis() as u64,
                    "a mapping evaluation ran past the time limit and was stopped");
                EvalError::Mapping(mapping_error(
                    mapping,
                    format!("the evaluation took longer than the time limit of {}", humantime::format_duration(limit)),
                ))
            }
            End::LoadFailed(message) => EvalError::Unavailable(format!("the sandbox could not compile {}: {message}", mapping.file())),
            End::Unasked => EvalError::Unavailable("the sandbox sent an answer it should not".into()),
            // Never told to a requester (see `read_answers`).
            End::Released => EvalError::Unavailable("the sandbox process was let go".into()),
        }
    }

    /// Queues a render request on the least busy process, with the
    /// mapping's LOAD frame before it if that process has not had it.
    fn send(&self, mapping: &Mapping, request: Vec<Bytes>, reply: oneshot::Sender<Reply>) -> Result<(), EvalError> {
        loop {
            let lane = self.lane()?;
            let mut state = lane.state.lock().expect("sandbox lane lock");
            let Some(writer) = state.writer.clone() else { continue };
            let load = !state.loaded.contains(mapping.version());
            let frames = if load {
                let source = serde_json::to_vec(mapping.source()).expect("a mapping source serializes");
                let mut frames = frame(tag::LOAD, vec![Bytes::from(source)]).map_err(|e| EvalError::Unavailable(e.to_string()))?;
                frames.extend(request);
                state.loaded.insert(mapping.version().to_owned());
                frames
            } else {
                request
            };
            state.pending.push_back(Pending { load, queued_at: Instant::now(), reply });
            // Sent under the lane's lock, so that frames reach the process
            // in the order of `pending`. A closed channel means the process
            // is ending; its reader answers `pending` then.
            let _ = writer.send(frames);
            drop(state);
            lane.queued.notify_one();
            return Ok(());
        }
    }

    /// The live process with the fewest requests, or a new one while
    /// there are fewer than `processes` and each has work.
    fn lane(&self) -> Result<Arc<Lane>, EvalError> {
        let mut lanes = self.lanes.lock().expect("sandbox pool lock");
        lanes.retain(|lane| lane.state.lock().expect("sandbox lane lock").writer.is_some());
        let least_busy = lanes.iter().map(|lane| (lane.state.lock().expect("sandbox lane lock").pending.len(), lane)).min_by_key(|(n, _)| *n);
        match least_busy {
            Some((n, lane)) if n == 0 || lanes.len() >= self.processes => Ok(lane.clone()),
            _ => {
                let lane = self.spawn()?;
                lanes.push(lane.clone());
                Ok(lane)
            }
        }
    }

    fn spawn(&self) -> Result<Arc<Lane>, EvalError> {
        let mut child = tokio::process::Command::new(&self.program)
            .arg("mapping-sandbox")
            .arg("--memory-limit-mib")
            .arg(self.settings.memory_limit_mib.to_string())
            .arg("--output-limit-mib")
            .arg(self.settings.output_limit_mib.to_string())
            // Secrets live in the environment; a mapping has no business
            // with them.
            .env_clear()
            // The binary's allocator (mimalloc) reserves address space 1 GiB
            // at a time, before `serve` sets the address-space limit: with
            // that reserve, a mapping could allocate a gigabyte under any
            // limit. Smaller reserves keep every allocation under it.
            .env("MIMALLOC_ARENA_RESERVE", "16MiB")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| EvalError::Unavailable(format!("cannot start {}: {e}", self.program.display())))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (writer, frames) = mpsc::unbounded_channel();
        let lane = Arc::new(Lane {
            state: Mutex::new(LaneState { writer: Some(writer), loaded: HashSet::new(), pending: VecDeque::new() }),
            queued: Notify::new(),
        });
        tokio::spawn(write_frames(stdin, frames));
        tokio::spawn(read_answers(lane.clone(), child, stdout, self.settings.time_limit));
        Ok(lane)
    }
}

impl Drop for Sandbox {
    /// Closes every process's stdin: each ends once it has answered what
    /// it was sent.
    fn drop(&mut self) {
        for lane in self.lanes.lock().expect("sandbox pool lock").drain(..) {
            lane.state.lock().expect("sandbox lane lock").writer = None;
        }
    }
}

/// A lane's writer: the frames queued for its process, in order, until the
/// channel closes (stdin closes with it) or the pipe breaks (the process
/// ended; its reader sees that).
async fn write_frames(mut stdin: ChildStdin, mut frames: mpsc::UnboundedReceiver<Vec<Bytes>>) {
    while let Some(parts) = frames.recv().await {
        for part in &parts {
            if stdin.write_all(part).await.is_err() {
                return;
            }
        }
        if stdin.flush().await.is_err() {
            return;
        }
    }
}

/// A lane's reader: matches answers to pending requests in order, keeps
/// the time limit of the head, and when the process ends answers what is
/// still pending (the head with its crash or time-out, the rest as
/// displaced).
async fn read_answers(lane: Arc<Lane>, mut child: Child, stdout: BufReader<ChildStdout>, limit: Duration) {
    let mut reading = Box::pin(read_frame(stdout));
    // When the current head started: its queueing or the answer before it.
    let mut head_since = Instant::now();
    let end = loop {
        let head_queued = lane.state.lock().expect("sandbox lane lock").pending.front().map(|p| p.queued_at);
        let deadline = head_queued.map(|queued| queued.max(head_since) + limit);
        tokio::select! {
            // An answer that is there wins over a deadline passing at the
            // same moment: the head was done in time.
            biased;
            (stdout, frame) = &mut reading => {
                let (t, payload) = match frame {
                    Ok(frame) => frame,
                    Err(_) if lane.state.lock().expect("sandbox lane lock").pending.is_empty() => break End::Released,
                    Err(io) => break End::Crashed(io),
                };
                let mut state = lane.state.lock().expect("sandbox lane lock");
                let Some(head) = state.pending.front_mut() else { break End::Unasked };
                if head.load {
                    if t != tag::LOADED {
                        break End::LoadFailed(String::from_utf8_lossy(&payload).into_owned());
                    }
                    head.load = false;
                } else {
                    let head = state.pending.pop_front().expect("a head");
                    // The requester may have gone (shut down); the answer
                    // is then nobody's.
                    let _ = head.reply.send(Reply::Answered(decode_answer(t, payload)));
                    head_since = Instant::now();
                }
                drop(state);
                reading.set(read_frame(stdout));
            }
            _ = lane.queued.notified() => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break End::TimedOut,
        }
    };
    let pending = {
        let mut state = lane.state.lock().expect("sandbox lane lock");
        state.writer = None;
        std::mem::take(&mut state.pending)
    };
    let _ = child.start_kill();
    let status = child.wait().await.ok();
    let mut pending = pending.into_iter();
    // A released process evaluated nothing: a request queued while it
    // went goes to another process, as those behind a head do.
    if !matches!(end, End::Released)
        && let Some(head) = pending.next()
    {
        let _ = head.reply.send(Reply::Ended(end, status));
    }
    for displaced in pending {
        let _ = displaced.reply.send(Reply::Displaced);
    }
}

fn decode_answer(t: u8, payload: Vec<u8>) -> Result<Rendition, EvalError> {
    let bad = || EvalError::Unavailable("the sandbox sent an answer it should not".into());
    // Header line, then the bytes, sliced without copying them again.
    let split = |payload: Vec<u8>| -> Option<(Bytes, Bytes)> {
        let newline = payload.iter().position(|&b| b == b'\n')?;
        let mut body = Bytes::from(payload);
        let header = body.split_to(newline);
        Some((header, body.slice(1..)))
    };
    match t {
        tag::DOCUMENT => {
            let (header, body) = split(payload).ok_or_else(bad)?;
            let header: DocumentHeader = serde_json::from_slice(&header).map_err(|_| bad())?;
            Ok(Rendition::Document { content_type: header.content_type, body })
        }
        tag::PACKAGE => {
            let (header, body) = split(payload).ok_or_else(bad)?;
            let header: PackageHeader = serde_json::from_slice(&header).map_err(|_| bad())?;
            let mut offset: usize = 0;
            let mut files = Vec::with_capacity(header.files.len());
            for h in header.files {
                let content = match h.blob {
                    Some(blob) => PackedContent::Stored(blob),
                    None => {
                        let end = offset.checked_add(h.len).filter(|&e| e <= body.len()).ok_or_else(bad)?;
                        let bytes = body.slice(offset..end);
                        offset = end;
                        PackedContent::Bytes(bytes)
                    }
                };
                files.push(PackedFile { path: h.path, content });
            }
            Ok(Rendition::Package { format: header.format, modified: header.modified, files })
        }
        tag::RENDER_ERROR => Err(EvalError::Mapping(serde_json::from_slice(&payload).map_err(|_| bad())?)),
        tag::UNDECODABLE => Err(EvalError::Undecodable(String::from_utf8_lossy(&payload).into_owned())),
        tag::PROTOCOL_ERROR => Err(EvalError::Unavailable(format!("the sandbox refused the request: {}", String::from_utf8_lossy(&payload)))),
        _ => Err(bad()),
    }
}

/// Frames larger than this are refused by both sides.
const MAX_FRAME: usize = 1 << 30;

/// Frames up to this size are written in one piece.
const ONE_WRITE: usize = 64 * 1024;

/// A frame as the parts to write: small frames in one piece (each write
/// to the pipe wakes the sandbox, and a request in five writes would wake
/// it up to five times), large ones as their parts.
fn frame(tag: u8, parts: Vec<Bytes>) -> std::io::Result<Vec<Bytes>> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len32 = u32::try_from(len).ok().filter(|&l| l as usize <= MAX_FRAME).ok_or_else(|| std::io::Error::other("frame too large"))?;
    let small = len <= ONE_WRITE;
    let mut head = Vec::with_capacity(5 + if small { len } else { 0 });
    head.push(tag);
    head.extend_from_slice(&len32.to_le_bytes());
    if small {
        parts.iter().for_each(|part| head.extend_from_slice(part));
        return Ok(vec![head.into()]);
    }
    let mut frame = vec![Bytes::from(head)];
    frame.extend(parts);
    Ok(frame)
}

/// Reads one frame; gives the reader back so that the next read can
/// start where this one ended.
async fn read_frame(mut r: BufReader<ChildStdout>) -> (BufReader<ChildStdout>, std::io::Result<(u8, Vec<u8>)>) {
    async fn read(r: &mut BufReader<ChildStdout>) -> std::io::Result<(u8, Vec<u8>)> {
        let t = r.read_u8().await?;
        let len = r.read_u32_le().await? as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::other("frame too large"));
        }
        let mut payload = vec![0; len];
        r.read_exact(&mut payload).await?;
        Ok((t, payload))
    }
    let frame = read(&mut r).await;
    (r, frame)
}

/// The sandbox process's side: sets its limits, then answers requests on
/// stdin/stdout until stdin closes. Runs in `amtsbote mapping-sandbox`.
pub fn serve(memory_limit_mib: u64, output_limit_mib: u64) -> std::io::Result<()> {
    set_limits(memory_limit_mib);
    // A panic message could quote data; say only where it happened.
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("mapping sandbox: internal error at {at}");
    }));
    let output_limit = usize::try_from(output_limit_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    // Evaluations run on a stack of a fixed size, whatever `ulimit -s`
    // says: a mapping that nests values without end overflows it (and the
    // process ends) after a few thousand levels, in milliseconds, so its
    // outcome is a crash on every machine, never a race with the time
    // limit.
    std::thread::Builder::new()
        .name("evaluation".into())
        .stack_size(EVALUATION_STACK_BYTES)
        .spawn(move || answer_requests(output_limit))?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the evaluation thread panicked")))
}

/// The stack of a sandbox's evaluations: ample for any mapping over form
/// data (JSON depth ≤ 100), small enough that unbounded nesting exhausts
/// it quickly.
pub const EVALUATION_STACK_BYTES: usize = 2 * 1024 * 1024;

fn answer_requests(output_limit: usize) -> std::io::Result<()> {
    let mut stdin = std::io::BufReader::new(std::io::stdin().lock());
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    // Each mapping with its code lists as a value, built once.
    let mut mappings: HashMap<String, (Mapping, Val)> = HashMap::new();
    use std::io::{Read as _, Write as _};
    loop {
        let mut head = [0u8; 5];
        match stdin.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::other("frame too large"));
        }
        let mut payload = vec![0; len];
        stdin.read_exact(&mut payload)?;
        let (t, answer): (u8, Vec<Bytes>) = match head[0] {
            tag::LOAD => {
                let compiled = serde_json::from_slice::<MappingSource>(&payload)
                    .map_err(|e| e.to_string())
                    .and_then(|source| Mapping::compile(source).map_err(|e| e.to_string()));
                match compiled {
                    Ok(mapping) => {
                        let answer = vec![Bytes::copy_from_slice(mapping.version().as_bytes())];
                        let code_lists = mapping.code_lists();
                        mappings.insert(mapping.version().to_owned(), (mapping, code_lists));
                        (tag::LOADED, answer)
                    }
                    Err(message) => (tag::LOAD_ERROR, vec![message.into()]),
                }
            }
            tag::RENDER => render_request(&mappings, &Bytes::from(payload), output_limit),
            _ => return Err(std::io::Error::other("unknown request")),
        };
        let len: usize = answer.iter().map(Bytes::len).sum();
        let len = u32::try_from(len).map_err(|_| std::io::Error::other("answer too large for a frame"))?;
        stdout.write_all(&[t])?;
        stdout.write_all(&len.to_le_bytes())?;
        for part in &answer {
            stdout.write_all(part)?;
        }
        stdout.flush()?;
    }
}

fn render_request(mappings: &HashMap<String, (Mapping, Val)>, payload: &Bytes, output_limit: usize) -> (u8, Vec<Bytes>) {
    let Some(newline) = payload.iter().position(|&b| b == b'\n') else {
        return (tag::PROTOCOL_ERROR, vec![Bytes::from_static(b"malformed request")]);
    };
    let Ok(header) = serde_json::from_slice::<RenderHeader>(&payload[..newline]) else {
        return (tag::PROTOCOL_ERROR, vec![Bytes::from_static(b"malformed request")]);
    };
    let Some((mapping, code_lists)) = mappings.get(&header.version) else {
        return (tag::PROTOCOL_ERROR, vec![Bytes::from_static(b"mapping version not loaded")]);
    };
    let attached_len = header.attached.iter().try_fold(0usize, |sum, a| sum.checked_add(a.len));
    let Some(message_end) = attached_len.and_then(|len| payload.len().checked_sub(len)).filter(|&end| end > newline) else {
        return (tag::PROTOCOL_ERROR, vec![Bytes::from_static(b"malformed request")]);
    };
    let mut submission = match super::input::parse(&payload.slice(newline + 1..message_end)) {
        Ok(v) => v,
        Err(e) => return (tag::UNDECODABLE, vec![format!("{:?}", e.classify()).into()]),
    };
    let mut offset = message_end;
    for attached in &header.attached {
        let bytes = &payload[offset..offset + attached.len];
        offset += attached.len;
        if !attach_content(&mut submission, attached.index, bytes) {
            return (tag::PROTOCOL_ERROR, vec![Bytes::from_static(b"no such attachment")]);
        }
    }
    let rendered = mapping.rendition_with(&submission, header.now, code_lists.clone()).and_then(|rendition| {
        if rendition.inline_len() > output_limit {
            Err(mapping_error(mapping, format!("the output is larger than the limit of {} MiB", output_limit / (1024 * 1024))))
        } else {
            Ok(rendition)
        }
    });
    match rendered {
        Ok(Rendition::Document { content_type, body }) => {
            let header = serde_json::to_vec(&DocumentHeader { content_type }).expect("serializes");
            (tag::DOCUMENT, vec![header.into(), Bytes::from_static(b"\n"), body])
        }
        Ok(Rendition::Package { format, modified, files }) => {
            let mut header = PackageHeader { format, modified, files: Vec::with_capacity(files.len()) };
            let mut bodies = Vec::with_capacity(files.len());
            for file in files {
                let (len, blob) = match file.content {
                    PackedContent::Bytes(bytes) => {
                        let len = bytes.len();
                        bodies.push(bytes);
                        (len, None)
                    }
                    PackedContent::Stored(blob) => (0, Some(blob)),
                };
                header.files.push(FileHeader { path: file.path, len, blob });
            }
            let mut parts = vec![serde_json::to_vec(&header).expect("serializes").into(), Bytes::from_static(b"\n")];
            parts.extend(bodies);
            (tag::PACKAGE, parts)
        }
        Err(e) => (tag::RENDER_ERROR, vec![serde_json::to_vec(&e).expect("serializes").into()]),
    }
}

/// Sets `content` (base64 of `bytes`) on the submission's attachment
/// number `index`; false if there is none.
fn attach_content(submission: &mut Val, index: usize, bytes: &[u8]) -> bool {
    use base64::Engine as _;
    let Val::Obj(message) = submission else { return false };
    let Some(Val::Arr(attachments)) = std::rc::Rc::make_mut(message).get_mut(&Val::from("attachments".to_owned())) else {
        return false;
    };
    let Some(Val::Obj(attachment)) = std::rc::Rc::make_mut(attachments).get_mut(index) else { return false };
    let content = base64::engine::general_purpose::STANDARD.encode(bytes);
    std::rc::Rc::make_mut(attachment).insert(Val::from("content".to_owned()), Val::from(content));
    true
}

fn set_limits(memory_limit_mib: u64) {
    #[cfg(unix)]
    unsafe {
        // SAFETY: setrlimit with a valid, fully initialised struct; it
        // affects only this process.
        let bytes = memory_limit_mib.saturating_mul(1024 * 1024) as libc::rlim_t;
        let memory = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
        libc::setrlimit(libc::RLIMIT_AS, &memory);
        // Core dumps would write form data to disk.
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
}
