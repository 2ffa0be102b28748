//! Rendering in helper processes whose memory is capped by the kernel.
//!
//! Fuel bounds how long a template runs and the output cap bounds what it writes, but neither
//! bounds what it builds on the way: `{% set a = x ~ x %}{% set b = a ~ a %}...` doubles a string
//! per statement, a recursive macro does the same in a loop, and filters such as `indent` or
//! `replace` grow text by any factor. No allocator can refuse such an allocation gracefully inside
//! the worker (an allocation failure aborts the process, and every other org's work with it), so
//! templates are rendered in small helper processes forked from the worker, each under
//! `RLIMIT_AS`. A template that outgrows the cap kills only its helper; the step fails with a
//! clear error and a fresh helper takes its place.
//!
//! A helper shares nothing with the worker but one socket: it closes every other descriptor at
//! start (so it holds no database connection or listener open), touches no lock, and leaves with
//! `_exit` when the worker closes the socket.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::TemplateError;

/// Longest a helper may take to answer one request (fuel ends any template long before).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest frame a helper accepts or sends.
const MAX_FRAME: usize = 64 * 1024 * 1024;

struct Helper {
    pid: libc::pid_t,
    stream: UnixStream,
}

impl Helper {
    fn exchange(&mut self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        write_frame(&mut self.stream, request)?;
        read_frame(&mut self.stream)
    }

    /// Ends the helper and reaps it, so no zombie is left behind.
    fn end(self) {
        drop(self.stream);
        // SAFETY: `pid` is a child this process forked and has not reaped yet.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

impl Drop for IsolatedRenderer {
    fn drop(&mut self) {
        let helpers = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        helpers.into_iter().for_each(Helper::end);
    }
}

/// Renders templates and evaluates conditions in memory-capped helper processes.
pub struct IsolatedRenderer {
    memory_limit: u64,
    idle: Mutex<Vec<Helper>>,
    helpers: Semaphore,
}

impl IsolatedRenderer {
    /// `memory_limit` is what one render may add to a helper's address space; `helpers` is how
    /// many renders run at once.
    pub fn new(memory_limit: u64, helpers: usize) -> IsolatedRenderer {
        IsolatedRenderer {
            memory_limit,
            idle: Mutex::new(Vec::new()),
            helpers: Semaphore::new(helpers.max(1)),
        }
    }

    /// Renders `source` against `context`, writing at most `limit` bytes.
    pub async fn render(&self, source: &str, context: &Value, limit: usize) -> Result<String, TemplateError> {
        // Substituting values builds nothing larger than what is in memory already: it needs no
        // helper, and skips the round trip to one.
        if crate::is_plain_substitution(source) {
            return crate::render_limited(source, context, limit);
        }
        let request = json!({"op": "render", "source": source, "context": context, "limit": limit});
        match self.call(&request).await? {
            Value::String(text) => Ok(text),
            other => Err(TemplateError(format!("the renderer answered {other}"))),
        }
    }

    /// Evaluates a `when` expression.
    pub async fn evaluate(&self, expression: &str, context: &Value) -> Result<bool, TemplateError> {
        let request = json!({"op": "evaluate", "source": expression, "context": context});
        match self.call(&request).await? {
            Value::Bool(holds) => Ok(holds),
            other => Err(TemplateError(format!("the renderer answered {other}"))),
        }
    }

    async fn call(&self, request: &Value) -> Result<Value, TemplateError> {
        let _turn =
            self.helpers.acquire().await.map_err(|_| TemplateError("the renderer is closed".into()))?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut helper = match idle {
            Some(helper) => helper,
            None => spawn_helper(self.memory_limit)
                .map_err(|e| TemplateError(format!("cannot start a template renderer: {e}")))?,
        };
        let bytes = serde_json::to_vec(request).map_err(|e| TemplateError(e.to_string()))?;
        let (answer, helper) = tokio::task::spawn_blocking(move || (helper.exchange(&bytes), helper))
            .await
            .map_err(|e| TemplateError(format!("the renderer failed: {e}")))?;
        let answer = match answer {
            Ok(answer) => answer,
            Err(_) => {
                // The helper died (its memory cap was reached) or hung: it is replaced next time.
                helper.end();
                return Err(TemplateError(format!(
                    "the template needs more than the {} MiB of memory a render may use",
                    self.memory_limit / (1024 * 1024)
                )));
            }
        };
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(helper);
        let answer: Value = serde_json::from_slice(&answer).map_err(|e| TemplateError(e.to_string()))?;
        match (answer.get("ok"), answer.get("error").and_then(Value::as_str)) {
            (Some(value), _) => Ok(value.clone()),
            (None, Some(error)) => Err(TemplateError(error.to_owned())),
            (None, None) => Err(TemplateError("the renderer gave no answer".into())),
        }
    }
}

fn write_frame(stream: &mut UnixStream, bytes: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    stream.write_all(&length.to_be_bytes())?;
    stream.write_all(bytes)
}

fn read_frame(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut bytes = vec![0u8; length];
    stream.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn spawn_helper(memory_limit: u64) -> std::io::Result<Helper> {
    // Initialised before the fork, so the helper never takes the environment's one-time lock.
    let _ = crate::environment();
    let (parent, child) = UnixStream::pair()?;
    parent.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    parent.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    // SAFETY: the child only closes descriptors, sets a resource limit and then runs
    // `serve_requests`, which allocates (glibc's malloc is reset for the child by fork), parses and
    // renders, uses its one socket, and leaves with `_exit`: it takes no lock another thread of the
    // parent could have held at the fork, and never returns into the parent's code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            let fd = child.as_raw_fd();
            // SAFETY: plain descriptor calls in the child; fd 3 becomes its socket and every
            // descriptor above it (database connections, listeners of the parent) is closed.
            unsafe {
                if fd != 3 {
                    libc::dup2(fd, 3);
                }
                libc::close_range(4, libc::c_uint::MAX, 0);
            }
            std::mem::forget(parent);
            std::mem::forget(child);
            cap_memory(memory_limit);
            // SAFETY: fd 3 is this process's socket, owned by nothing else from here on.
            let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(3) };
            serve_requests(stream)
        }
        pid => {
            drop(child);
            Ok(Helper { pid, stream: parent })
        }
    }
}

/// Caps the helper's address space at what it has now plus `memory_limit`.
fn cap_memory(memory_limit: u64) {
    let page = 4096u64;
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().next().and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    let cap = pages * page + memory_limit;
    let limit = libc::rlimit { rlim_cur: cap, rlim_max: cap };
    // SAFETY: setrlimit reads the struct it is given and changes only this process.
    unsafe {
        libc::setrlimit(libc::RLIMIT_AS, &limit);
    }
}

fn serve_requests(mut stream: UnixStream) -> ! {
    loop {
        let Ok(request) = read_frame(&mut stream) else { leave() };
        let answer = match serde_json::from_slice::<Value>(&request) {
            Ok(request) => answer(&request),
            Err(error) => json!({"error": error.to_string()}),
        };
        let bytes = serde_json::to_vec(&answer).unwrap_or_default();
        if write_frame(&mut stream, &bytes).is_err() {
            leave();
        }
    }
}

fn answer(request: &Value) -> Value {
    let source = request["source"].as_str().unwrap_or_default();
    let context = &request["context"];
    let outcome = match request["op"].as_str() {
        Some("render") => {
            let limit = request["limit"].as_u64().map_or(crate::MAX_OUTPUT_BYTES, |l| l as usize);
            crate::render_limited(source, context, limit).map(Value::String)
        }
        Some("evaluate") => crate::evaluate(source, context).map(Value::Bool),
        _ => Err(TemplateError("unknown request".into())),
    };
    match outcome {
        Ok(value) => json!({"ok": value}),
        Err(error) => json!({"error": error.0}),
    }
}

fn leave() -> ! {
    // SAFETY: `_exit` ends the helper without running the parent's exit handlers or destructors.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peak_rss_bytes;

    #[tokio::test]
    async fn a_template_that_doubles_a_string_kills_only_its_helper() {
        let renderer = IsolatedRenderer::new(256 * 1024 * 1024, 2);
        let context = json!({"event_payload": {"ticket_id": "tkt_1"}});
        assert_eq!(
            renderer.render("T {{ event_payload.ticket_id }}", &context, 1024).await.unwrap(),
            "T tkt_1"
        );
        let before = peak_rss_bytes();
        // 100 MB, doubled 40 times: a hundred petabytes if nothing stops it.
        let mut bomb = String::from("{% set s0 = 'x' * 100000000 %}");
        for n in 1..=40 {
            bomb.push_str(&format!("{{% set s{n} = s{} ~ s{} %}}", n - 1, n - 1));
        }
        bomb.push_str("{{ s40 | length }}");
        let error = renderer.render(&bomb, &context, 1024).await.unwrap_err();
        assert!(error.0.contains("memory"), "{error}");
        let grown = peak_rss_bytes().saturating_sub(before);
        assert!(grown < 64 * 1024 * 1024, "the worker itself grew by {grown} bytes");
        // The next render gets a fresh helper; conditions work the same way.
        assert_eq!(
            renderer.render("T {{ event_payload.ticket_id }}", &context, 1024).await.unwrap(),
            "T tkt_1"
        );
        assert!(renderer.evaluate("event_payload.ticket_id == 'tkt_1'", &context).await.unwrap());
        let error = renderer.render("{{ missing.deeper }}", &context, 1024).await.unwrap_err();
        assert!(error.0.contains("undefined"), "{error}");
    }
}
