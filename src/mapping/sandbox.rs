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

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use jaq_json::Val;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Semaphore;

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
            time_limit: default_time_limit(),
            memory_limit_mib: default_memory_limit(),
            output_limit_mib: default_output_limit(),
            program: None,
        }
    }
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
pub struct Sandbox {
    settings: SandboxSettings,
    program: PathBuf,
    permits: Semaphore,
    idle: Mutex<Vec<Process>>,
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Mapping versions this process has compiled.
    loaded: HashSet<String>,
}

impl Sandbox {
    pub fn new(settings: SandboxSettings) -> std::io::Result<Arc<Self>> {
        let program = match &settings.program {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        let processes = settings.processes.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
        Ok(Arc::new(Self { settings, program, permits: Semaphore::new(processes), idle: Mutex::new(Vec::new()) }))
    }

    /// Renders `submission` (the queued message's bytes) with `mapping`;
    /// `attached` are the bytes of stored attachments (by index) that the
    /// mapping reads as their `content`.
    pub async fn render(&self, mapping: &Mapping, submission: &[u8], attached: &[(usize, Bytes)], now: i64) -> Result<Rendition, EvalError> {
        let _permit = self.permits.acquire().await.map_err(|_| EvalError::Unavailable("the sandbox is closed".into()))?;
        let idle = self.idle.lock().expect("sandbox pool lock").pop();
        let mut process = match idle {
            Some(p) => p,
            None => self.spawn()?,
        };
        let limit = self.settings.time_limit;
        match tokio::time::timeout(limit, Self::exchange(&mut process, mapping, submission, attached, now)).await {
            Ok(Ok(answer)) => {
                self.idle.lock().expect("sandbox pool lock").push(process);
                answer
            }
            Ok(Err(io)) => {
                // The process died mid-request (the evaluation crashed it),
                // or it broke the protocol: either way it is done.
                let status = stop(&mut process).await;
                tracing::warn!(event = "sandbox_crashed", mapping = mapping.file(), status = ?status, error = %io,
                    "a mapping evaluation ended its sandbox process");
                Err(EvalError::Mapping(mapping_error(
                    mapping,
                    format!(
                        "the evaluation crashed (stack overflow from deep recursion, or more than the memory limit of {} MiB)",
                        self.settings.memory_limit_mib
                    ),
                )))
            }
            Err(_) => {
                stop(&mut process).await;
                tracing::warn!(event = "sandbox_timeout", mapping = mapping.file(), limit_ms = limit.as_millis() as u64,
                    "a mapping evaluation ran past the time limit and was stopped");
                Err(EvalError::Mapping(mapping_error(
                    mapping,
                    format!("the evaluation took longer than the time limit of {}", humantime::format_duration(limit)),
                )))
            }
        }
    }

    fn spawn(&self) -> Result<Process, EvalError> {
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
        Ok(Process { child, stdin, stdout, loaded: HashSet::new() })
    }

    async fn exchange(
        process: &mut Process,
        mapping: &Mapping,
        submission: &[u8],
        attached: &[(usize, Bytes)],
        now: i64,
    ) -> std::io::Result<Result<Rendition, EvalError>> {
        if !process.loaded.contains(mapping.version()) {
            let source = serde_json::to_vec(mapping.source()).expect("a mapping source serializes");
            write_frame(&mut process.stdin, tag::LOAD, &[&source]).await?;
            let (t, payload) = read_frame(&mut process.stdout).await?;
            if t != tag::LOADED {
                let message = String::from_utf8_lossy(&payload).into_owned();
                return Ok(Err(EvalError::Unavailable(format!("the sandbox could not compile {}: {message}", mapping.file()))));
            }
            process.loaded.insert(mapping.version().to_owned());
        }
        let header = RenderHeader {
            version: mapping.version().to_owned(),
            now,
            attached: attached.iter().map(|(index, bytes)| Attached { index: *index, len: bytes.len() }).collect(),
        };
        let header = serde_json::to_vec(&header).expect("serializes");
        let mut parts: Vec<&[u8]> = vec![&header, b"\n", submission];
        parts.extend(attached.iter().map(|(_, bytes)| bytes.as_ref()));
        write_frame(&mut process.stdin, tag::RENDER, &parts).await?;
        let (t, payload) = read_frame(&mut process.stdout).await?;
        Ok(decode_answer(t, payload))
    }
}

/// Kills a sandbox process (if it still runs) and reaps it.
async fn stop(process: &mut Process) -> Option<std::process::ExitStatus> {
    let _ = process.child.start_kill();
    process.child.wait().await.ok()
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

/// Frames up to this size are written in one piece: each write to the
/// pipe wakes the sandbox, and a request in five writes would wake it up
/// to five times.
const ONE_WRITE: usize = 64 * 1024;

async fn write_frame(w: &mut ChildStdin, tag: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len32 = u32::try_from(len).map_err(|_| std::io::Error::other("frame too large"))?;
    let small = len <= ONE_WRITE;
    let mut frame = Vec::with_capacity(5 + if small { len } else { 0 });
    frame.push(tag);
    frame.extend_from_slice(&len32.to_le_bytes());
    if small {
        parts.iter().for_each(|part| frame.extend_from_slice(part));
        w.write_all(&frame).await?;
    } else {
        w.write_all(&frame).await?;
        for part in parts {
            w.write_all(part).await?;
        }
    }
    w.flush().await
}

async fn read_frame(r: &mut BufReader<ChildStdout>) -> std::io::Result<(u8, Vec<u8>)> {
    let t = r.read_u8().await?;
    let len = r.read_u32_le().await? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await?;
    Ok((t, payload))
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
    let mut mappings: HashMap<String, Mapping> = HashMap::new();
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
                        mappings.insert(mapping.version().to_owned(), mapping);
                        (tag::LOADED, answer)
                    }
                    Err(message) => (tag::LOAD_ERROR, vec![message.into()]),
                }
            }
            tag::RENDER => render_request(&mappings, &payload, output_limit),
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

fn render_request(mappings: &HashMap<String, Mapping>, payload: &[u8], output_limit: usize) -> (u8, Vec<Bytes>) {
    let Some(newline) = payload.iter().position(|&b| b == b'\n') else {
        return (tag::PROTOCOL_ERROR, vec![Bytes::from_static(b"malformed request")]);
    };
    let Ok(header) = serde_json::from_slice::<RenderHeader>(&payload[..newline]) else {
        return (tag::PROTOCOL_ERROR, vec![Bytes::from_static(b"malformed request")]);
    };
    let Some(mapping) = mappings.get(&header.version) else {
        return (tag::PROTOCOL_ERROR, vec![Bytes::from_static(b"mapping version not loaded")]);
    };
    let attached_len = header.attached.iter().try_fold(0usize, |sum, a| sum.checked_add(a.len));
    let Some(message_end) = attached_len.and_then(|len| payload.len().checked_sub(len)).filter(|&end| end > newline) else {
        return (tag::PROTOCOL_ERROR, vec![Bytes::from_static(b"malformed request")]);
    };
    let mut submission: Val = match serde_json::from_slice(&payload[newline + 1..message_end]) {
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
    let rendered = mapping.rendition(&submission, header.now).and_then(|rendition| {
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
