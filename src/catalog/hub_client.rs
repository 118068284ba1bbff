//! Talking to the Hugging Face Hub (or any server that answers the way it does): resolve
//! URLs, what a file's headers say about it, and byte ranges of it.
//!
//! The Hub answers `GET {endpoint}/{repo}/resolve/{revision}/{path}` for a large (LFS)
//! file with a redirect to its content store, and puts the file's sha256 (`x-linked-etag`)
//! and size (`x-linked-size`) on the redirect itself; a small file comes straight back
//! with a git `etag`. Content stores answer `Range` with 206 and `Content-Range`. This
//! client honours `HF_ENDPOINT`, `HF_TOKEN` and `HF_HOME` (the token file
//! `$HF_HOME/token`, as `huggingface-cli login` writes it); the token goes to the Hub's
//! own host only, never to the content store a redirect points at.

use std::io::Read;
use std::ops::Range;
use std::time::Duration;

use thiserror::Error;
use ureq::{Agent, AgentBuilder, RedirectAuthHeaders, Response};

/// The Hub unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where to reach the Hub and who to be there.
#[derive(Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// e.g. `https://huggingface.co`, without a trailing slash.
    pub endpoint: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for HubConfig {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl HubConfig {
    /// `HF_ENDPOINT` (default https://huggingface.co); the token from `HF_TOKEN`, else the
    /// file `$HF_HOME/token` (default `~/.cache/huggingface/token`).
    pub fn from_env() -> Self {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = std::env::var("HF_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .or_else(|| hf_hub::Cache::from_env().token());
        HubConfig::new(&endpoint, token)
    }

    pub fn new(endpoint: &str, token: Option<String>) -> Self {
        HubConfig {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{path}`, each part percent-encoded (a revision
    /// like `refs/pr/1` becomes one segment).
    pub fn resolve_url(&self, repo: &str, revision: &str, path: &str) -> String {
        let repo: Vec<String> = repo.split('/').map(encode_segment).collect();
        let path: Vec<String> = path.split('/').map(encode_segment).collect();
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            repo.join("/"),
            encode_segment(revision),
            path.join("/")
        )
    }
}

fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Why a request failed, and whether trying again may help.
#[derive(Debug, Error)]
pub enum HubError {
    #[error(
        "the Hub refused access to {url} ({status}): the repository is private or gated. Accept \
         its licence on the Hub, then set HF_TOKEN (or run `huggingface-cli login`, which writes \
         $HF_HOME/token)"
    )]
    Refused { url: String, status: u16 },
    #[error("not found: {url} (404): check the repository, revision and file name")]
    NotFound { url: String },
    #[error("{url} answered {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("reading {url}: {source}")]
    Read {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {message}")]
    Protocol { url: String, message: String },
}

impl HubError {
    /// Network trouble and server errors pass; refusals and missing files do not.
    pub fn is_transient(&self) -> bool {
        match self {
            HubError::Unreachable { .. } | HubError::Read { .. } => true,
            HubError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// What the Hub's headers say about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// The resolve URL the file was probed at.
    pub url: String,
    pub size: u64,
    /// sha256 of the whole file (`x-linked-etag`, or an `etag` that is a sha256); `None`
    /// for small git-stored files, whose etag is a git hash.
    pub sha256: Option<String>,
    /// `x-repo-commit`: the commit the revision resolved to.
    pub commit: Option<String>,
}

/// The body of a range request.
pub enum Body {
    /// 206: exactly the bytes asked for.
    Partial(Box<dyn Read + Send + Sync>),
    /// 200: the server ignored `Range` and sends the whole file from byte 0.
    Whole(Box<dyn Read + Send + Sync>),
}

/// A blocking client for resolve URLs (the node calls it from `spawn_blocking`).
#[derive(Clone)]
pub struct HubClient {
    config: HubConfig,
    /// Follows redirects, keeping the token on the same host only.
    follow: Agent,
    /// Follows nothing: the Hub's redirect carries the headers a probe wants.
    direct: Agent,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("config", &self.config)
            .finish()
    }
}

impl HubClient {
    pub fn new(config: HubConfig) -> Self {
        let builder = || {
            AgentBuilder::new()
                .timeout_connect(Duration::from_secs(15))
                .timeout_read(Duration::from_secs(60))
                .user_agent(concat!("exo-rs/", env!("CARGO_PKG_VERSION")))
                .try_proxy_from_env(true)
        };
        HubClient {
            follow: builder()
                .redirects(8)
                .redirect_auth_headers(RedirectAuthHeaders::SameHost)
                .build(),
            direct: builder().redirects(0).build(),
            config,
        }
    }

    pub fn from_env() -> Self {
        Self::new(HubConfig::from_env())
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn resolve_url(&self, repo: &str, revision: &str, path: &str) -> String {
        self.config.resolve_url(repo, revision, path)
    }

    /// Size, sha256 and commit of the file at `url`, as hf-hub reads them: a one-byte
    /// range request that follows only redirects on the same host (the Hub's own, such
    /// as a renamed repository), reading `x-linked-*` from the redirect to the content
    /// store when there is one.
    pub fn probe(&self, url: &str) -> Result<RemoteFile, HubError> {
        let mut current = url.to_string();
        let mut sha256 = None;
        let mut known_size = None;
        let mut commit = None;
        let mut same_host = true;
        let size = 'found: {
            for _ in 0..8 {
                let agent = if same_host {
                    &self.direct
                } else {
                    &self.follow
                };
                let response = self.send(agent, &current, Some(0..1), same_host)?;
                let status = response.status();
                sha256 = sha256.or_else(|| linked_sha256(&response));
                known_size = known_size.or_else(|| {
                    response
                        .header("x-linked-size")
                        .and_then(|s| s.trim().parse().ok())
                });
                commit = commit.or_else(|| response.header("x-repo-commit").map(str::to_string));
                if (300..400).contains(&status) {
                    let location =
                        response
                            .header("location")
                            .ok_or_else(|| HubError::Protocol {
                                url: current.clone(),
                                message: format!("a {status} redirect without a Location"),
                            })?;
                    let next = join_url(&current, location).ok_or_else(|| HubError::Protocol {
                        url: current.clone(),
                        message: format!("a redirect to an invalid location '{location}'"),
                    })?;
                    if same_host && host_of(&next) != host_of(&current) {
                        if let Some(size) = known_size {
                            break 'found size;
                        }
                        same_host = false;
                    }
                    current = next;
                    continue;
                }
                let size = known_size
                    .or_else(|| content_range_total(&response))
                    .or_else(|| {
                        (status == 200)
                            .then(|| response.header("content-length")?.trim().parse().ok())
                            .flatten()
                    })
                    .ok_or_else(|| HubError::Protocol {
                        url: current.clone(),
                        message: "the answer says neither x-linked-size, Content-Range nor \
                              Content-Length: the file's size is unknown"
                            .into(),
                    })?;
                break 'found size;
            }
            return Err(HubError::Protocol {
                url: url.to_string(),
                message: "too many redirects".into(),
            });
        };
        Ok(RemoteFile {
            url: url.to_string(),
            size,
            sha256,
            commit,
        })
    }

    /// Bytes `range` of the file at `url`, following redirects. A server that ignores
    /// `Range` answers [`Body::Whole`]; one that answers another range than asked is an
    /// error.
    pub fn open_range(&self, url: &str, range: Range<u64>) -> Result<Body, HubError> {
        let response = self.send(&self.follow, url, Some(range.clone()), true)?;
        match response.status() {
            206 => {
                let expected = (range.start, range.end - 1);
                match content_range(&response) {
                    Some((start, end, _)) if (start, end) == expected => {
                        Ok(Body::Partial(response.into_reader()))
                    }
                    other => Err(HubError::Protocol {
                        url: url.to_string(),
                        message: format!(
                            "asked for bytes {}-{}, the server answered {:?}",
                            expected.0, expected.1, other
                        ),
                    }),
                }
            }
            200 => Ok(Body::Whole(response.into_reader())),
            status => Err(HubError::Status {
                url: url.to_string(),
                status,
                detail: " to a range request".into(),
            }),
        }
    }

    /// A small file, whole (an index or a config; refused beyond `limit` bytes).
    pub fn get_small(&self, url: &str, limit: u64) -> Result<Vec<u8>, HubError> {
        let response = self.send(&self.follow, url, None, true)?;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| HubError::Read {
                url: url.to_string(),
                source,
            })?;
        if bytes.len() as u64 > limit {
            return Err(HubError::Protocol {
                url: url.to_string(),
                message: format!("more than {limit} bytes for a file expected to be small"),
            });
        }
        Ok(bytes)
    }

    fn send(
        &self,
        agent: &Agent,
        url: &str,
        range: Option<Range<u64>>,
        with_token: bool,
    ) -> Result<Response, HubError> {
        let mut request = agent.get(url);
        if let Some(range) = range {
            request = request.set("Range", &format!("bytes={}-{}", range.start, range.end - 1));
        }
        if with_token && let Some(token) = &self.config.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.call() {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => Err(match status {
                401 | 403 => HubError::Refused {
                    url: url.to_string(),
                    status,
                },
                404 => HubError::NotFound {
                    url: url.to_string(),
                },
                _ => HubError::Status {
                    url: url.to_string(),
                    status,
                    detail: response
                        .into_string()
                        .ok()
                        .map(|body| body.chars().take(200).collect::<String>())
                        .filter(|body| !body.trim().is_empty())
                        .map(|body| format!(": {}", body.trim()))
                        .unwrap_or_default(),
                },
            }),
            Err(ureq::Error::Transport(transport)) => Err(HubError::Unreachable {
                url: url.to_string(),
                message: transport.to_string(),
            }),
        }
    }
}

/// The file's sha256 from `x-linked-etag` (LFS) or an `etag` that is one.
fn linked_sha256(response: &Response) -> Option<String> {
    ["x-linked-etag", "etag"].iter().find_map(|name| {
        let value = response.header(name)?;
        let value = value.trim().trim_start_matches("W/").trim_matches('"');
        (value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| value.to_ascii_lowercase())
    })
}

/// `Content-Range: bytes START-END/TOTAL`.
fn content_range(response: &Response) -> Option<(u64, u64, Option<u64>)> {
    let value = response.header("content-range")?.trim();
    let rest = value.strip_prefix("bytes")?.trim();
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    Some((
        start.trim().parse().ok()?,
        end.trim().parse().ok()?,
        total.trim().parse().ok(),
    ))
}

fn content_range_total(response: &Response) -> Option<u64> {
    content_range(response)?.2
}

/// The host of an absolute http(s) URL, without port or user info.
fn host_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next();
    }
    host_port.split(':').next()
}

/// Where a `Location` points, from the URL that answered with it.
fn join_url(base: &str, location: &str) -> Option<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_string());
    }
    let (scheme, rest) = base.split_once("://")?;
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let path = rest[authority.len()..]
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let directory = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
    let directory = if directory.is_empty() { "/" } else { directory };
    Some(format!("{scheme}://{authority}{directory}{location}"))
}
