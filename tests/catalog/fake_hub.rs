//! A local stand-in for the Hugging Face Hub, on real loopback sockets: resolve URLs that
//! redirect large (LFS) files to a content store with `x-linked-etag` / `x-linked-size` /
//! `x-repo-commit` on the redirect (as hf-hub expects), small files served directly with
//! a git etag, `Range` → 206 with `Content-Range`, an optional token, and switches to
//! misbehave: ignore Range, corrupt a byte once, cut a connection once, advertise a wrong
//! sha256. It counts the body bytes it sends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// One file the hub serves.
struct Served {
    bytes: Arc<Vec<u8>>,
    /// What the hub claims the sha256 is (the real one unless told to lie).
    advertised_sha256: String,
    /// Large files go through a redirect to the content store.
    lfs: bool,
}

/// A request as the hub saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct HubState {
    files: Mutex<Vec<(String, Served)>>,
    token: Mutex<Option<String>>,
    ignore_range: AtomicBool,
    /// Cut the connection once the content store has sent this many bytes in total.
    cut_at_total: Mutex<Option<u64>>,
    /// Flip the byte at this offset of a file the next time a body covers it.
    corrupt_at: Mutex<Option<(usize, u64)>>,
    served: AtomicU64,
    log: Mutex<Vec<Logged>>,
    cdn_base: Mutex<String>,
}

/// A running fake hub. Dropping it stops the server.
pub struct FakeHub {
    pub endpoint: String,
    state: Arc<HubState>,
    cdn_other_host: bool,
    _runtime: tokio::runtime::Runtime,
}

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

impl FakeHub {
    pub fn start() -> FakeHub {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(HubState::default());
        let app = Router::new()
            .route("/{owner}/{name}/resolve/{revision}/{*path}", get(resolve))
            .route("/cdn/{index}", get(content))
            .with_state(state.clone());
        let hub = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", hub.local_addr().unwrap());
        // The content store on another loopback address where the system allows it, so
        // that a token leaking across the redirect would show.
        let (cdn, cdn_other_host) = match std::net::TcpListener::bind("127.0.0.2:0") {
            Ok(listener) => (listener, true),
            Err(_) => (std::net::TcpListener::bind("127.0.0.1:0").unwrap(), false),
        };
        *state.cdn_base.lock().unwrap() = format!("http://{}", cdn.local_addr().unwrap());
        for listener in [hub, cdn] {
            listener.set_nonblocking(true).unwrap();
            let app = app.clone();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        }
        FakeHub {
            endpoint,
            state,
            cdn_other_host,
            _runtime: runtime,
        }
    }

    /// Serves `bytes` as `repo` at `revision`, file `path` (an LFS file unless it is small
    /// JSON). Returns the file's index (for [`Self::corrupt_once_at`]).
    pub fn add(&self, repo: &str, revision: &str, path: &str, bytes: Vec<u8>) -> usize {
        let sha = hex(&Sha256::digest(&bytes));
        let lfs = !path.ends_with(".json");
        let mut files = self.state.files.lock().unwrap();
        files.push((
            format!("{repo}@{revision}:{path}"),
            Served {
                bytes: Arc::new(bytes),
                advertised_sha256: sha,
                lfs,
            },
        ));
        files.len() - 1
    }

    /// From now on, claim `sha256` for every file (a hub that lies).
    pub fn advertise_sha256(&self, sha256: &str) {
        for (_, served) in self.state.files.lock().unwrap().iter_mut() {
            served.advertised_sha256 = sha256.to_string();
        }
    }

    pub fn require_token(&self, token: &str) {
        *self.state.token.lock().unwrap() = Some(token.to_string());
    }

    pub fn ignore_range(&self, ignore: bool) {
        self.state.ignore_range.store(ignore, Ordering::SeqCst);
    }

    /// Cut the connection once the content store has sent `total` bytes since start.
    pub fn cut_at_total(&self, total: u64) {
        *self.state.cut_at_total.lock().unwrap() = Some(total);
    }

    /// Flip the byte at `offset` of file `index` the next time a body covers it.
    pub fn corrupt_once_at(&self, index: usize, offset: u64) {
        *self.state.corrupt_at.lock().unwrap() = Some((index, offset));
    }

    /// Body bytes sent so far (content store and small files).
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// Whether the content store is on another host than the hub.
    pub fn cdn_on_other_host(&self) -> bool {
        self.cdn_other_host
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn log(state: &HubState, path: String, headers: &HeaderMap, status: u16) {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    state.log.lock().unwrap().push(Logged {
        path,
        range: text(header::RANGE),
        authorization: text(header::AUTHORIZATION),
        status,
    });
}

async fn resolve(
    State(state): State<Arc<HubState>>,
    Path((owner, name, revision, path)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let request_path = format!("/{owner}/{name}/resolve/{revision}/{path}");
    let token = state.token.lock().unwrap().clone();
    if let Some(token) = token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if sent != Some(format!("Bearer {token}").as_str()) {
            log(&state, request_path, &headers, 401);
            return (StatusCode::UNAUTHORIZED, "Invalid credentials").into_response();
        }
    }
    let key = format!("{owner}/{name}@{revision}:{path}");
    let found = {
        let files = state.files.lock().unwrap();
        files.iter().position(|(k, _)| *k == key).map(|index| {
            let served = &files[index].1;
            (
                index,
                served.lfs,
                served.advertised_sha256.clone(),
                served.bytes.len(),
            )
        })
    };
    let Some((index, lfs, sha, size)) = found else {
        log(&state, request_path, &headers, 404);
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    if !lfs {
        log(&state, request_path, &headers, 200);
        return body_response(&state, index, &headers, Some(COMMIT));
    }
    log(&state, request_path, &headers, 302);
    let location = format!("{}/cdn/{index}", state.cdn_base.lock().unwrap());
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, location)
        .header("x-linked-etag", format!("\"{sha}\""))
        .header("x-linked-size", size.to_string())
        .header("x-repo-commit", COMMIT)
        .header(header::ETAG, format!("\"{sha}\""))
        .body(Body::empty())
        .unwrap()
}

async fn content(
    State(state): State<Arc<HubState>>,
    Path(index): Path<usize>,
    headers: HeaderMap,
) -> Response {
    log(&state, format!("/cdn/{index}"), &headers, 200);
    if state.files.lock().unwrap().get(index).is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    body_response(&state, index, &headers, None)
}

/// The bytes of file `index`: the asked range with 206, or everything with 200.
fn body_response(
    state: &Arc<HubState>,
    index: usize,
    headers: &HeaderMap,
    commit: Option<&str>,
) -> Response {
    let (bytes, sha) = {
        let files = state.files.lock().unwrap();
        (
            files[index].1.bytes.clone(),
            files[index].1.advertised_sha256.clone(),
        )
    };
    let size = bytes.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(s, e)| Some((s.parse::<u64>().ok()?, e.parse::<u64>().ok()?)));
    let ignore = state.ignore_range.load(Ordering::SeqCst);
    let (status, start, end) = match range {
        Some((s, e)) if !ignore => {
            if s > e || e >= size {
                return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            }
            (StatusCode::PARTIAL_CONTENT, s, e + 1)
        }
        _ => (StatusCode::OK, 0, size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, (end - start).to_string())
        .header(header::ACCEPT_RANGES, if ignore { "none" } else { "bytes" });
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    if let Some(commit) = commit {
        // A small file: git etag (a sha1, not the content's sha256), as the Hub sends.
        builder = builder
            .header("x-repo-commit", commit)
            .header(header::ETAG, format!("\"{}\"", &sha[..40]));
    }
    builder
        .body(stream_body(state.clone(), index, bytes, start, end))
        .unwrap()
}

/// Streams bytes [start, end) in 64 KiB pieces, counting them, applying a pending
/// corruption or cut.
fn stream_body(
    state: Arc<HubState>,
    index: usize,
    bytes: Arc<Vec<u8>>,
    start: u64,
    end: u64,
) -> Body {
    // The state: the next position, or None once a cut piece has gone out.
    let stream = futures::stream::unfold(Some(start), move |position| {
        let state = state.clone();
        let bytes = bytes.clone();
        async move {
            let Some(position) = position else {
                // Let the server put the bytes sent so far on the wire, then fail the
                // body: the connection closes before Content-Length is reached.
                tokio::task::yield_now().await;
                return Some((Err(std::io::Error::other("cut by the test")), None));
            };
            if position >= end {
                return None;
            }
            let mut next = (position + (64 << 10)).min(end);
            let mut cut = false;
            {
                let mut cut_at = state.cut_at_total.lock().unwrap();
                if let Some(total) = *cut_at {
                    let served = state.served.load(Ordering::SeqCst);
                    if served + (next - position) >= total {
                        next = position + total.saturating_sub(served);
                        *cut_at = None;
                        cut = true;
                    }
                }
            }
            let mut piece = bytes[position as usize..next as usize].to_vec();
            {
                let mut corrupt = state.corrupt_at.lock().unwrap();
                if let Some((file, offset)) = *corrupt
                    && file == index
                    && (position..next).contains(&offset)
                {
                    piece[(offset - position) as usize] ^= 0x5a;
                    *corrupt = None;
                }
            }
            state.served.fetch_add(piece.len() as u64, Ordering::SeqCst);
            let next = if cut { None } else { Some(next) };
            Some((Ok(Bytes::from(piece)), next))
        }
    });
    Body::from_stream(stream)
}
