//! Who may call the API: bearer keys (or `x-api-key`) on /v1 and /api, admin endpoints for
//! the admin key (or loopback when there is none, and no proxy in between), no cross-site use
//! unless an origin is allowed, only the names the node serves in `Host` (no DNS rebinding),
//! and chat requests and admin POSTs only as JSON (a cross-site form post cannot be JSON
//! without a CORS preflight). /healthz stays open for load balancers and probes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::config::ApiConfig;
use super::error::ApiError;
use super::limit::is_generation;

/// Paths of the admin API (the node's resources: list, health, report, reset; drain).
fn is_admin(path: &str) -> bool {
    path == "/v1/resources" || path.starts_with("/v1/resources/") || path.starts_with("/v1/admin/")
}

/// The web UI's page and assets: static text with no data in it, open like /healthz (the
/// page asks for an API key and sends it with the calls it makes).
pub fn is_static(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

/// Whether `host` (a Host header: `name`, `name:port`, `[v6]:port`) names this node: an
/// IP address, a loopback name, or one of `public_names` (`--public-name`). A
/// DNS-rebinding page reaches the node under the attacker's own name (whose DNS answer
/// was moved to the node's address), with an Origin to match, so any other name is
/// refused. An IP address cannot be such a name: a page is same-origin with it only when
/// it was served from it.
fn host_is_served(host: &str, public_names: &[String]) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || public_names.iter().any(|p| {
            let p = p.strip_suffix('.').unwrap_or(p);
            p.eq_ignore_ascii_case(name)
        })
}

/// The host a request names: its Host header, or the authority of its URI (HTTP/2, or a
/// request in absolute form).
fn request_host(request: &Request) -> Option<String> {
    match request.headers().get(header::HOST) {
        Some(host) => Some(host.to_str().unwrap_or("\u{fffd}").to_string()),
        None => request.uri().authority().map(|a| a.to_string()),
    }
}

/// Headers a reverse proxy adds: a request with any of them came through one, and its
/// loopback source address says nothing about who sent it.
const FORWARDING_HEADERS: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
];

fn forwarded(headers: &HeaderMap) -> Option<&'static str> {
    FORWARDING_HEADERS
        .into_iter()
        .find(|name| headers.contains_key(*name))
}

/// Whether a request's body is declared JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether `origin` is the origin the request was sent to (the node's own web UI: a
/// browser sends Origin on a same-origin POST). Only an exact `scheme://host[:port]`
/// equal to the Host header counts, so no other site is let in.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    ["http://", "https://"]
        .iter()
        .any(|scheme| origin.strip_prefix(scheme) == Some(host))
}

/// The key a request carries, if any: a bearer token, or `x-api-key` (how Anthropic's
/// clients send theirs).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let from_authorization = || {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    };
    from_authorization().or_else(|| Some(headers.get("x-api-key")?.to_str().ok()?.trim()))
}

/// Whether `token` is one of `keys`, comparing in constant time (no timing oracle).
fn one_of(token: Option<&str>, keys: &[String]) -> bool {
    let Some(token) = token else { return false };
    keys.iter().fold(false, |found, key| {
        found | bool::from(key.as_bytes().ct_eq(token.as_bytes()))
    })
}

fn unauthorized(message: &str) -> Response {
    let error = ApiError {
        status: StatusCode::UNAUTHORIZED,
        kind: "invalid_request_error",
        message: message.to_string(),
        param: None,
        code: Some("invalid_api_key"),
    };
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn forbidden(message: impl Into<String>) -> Response {
    ApiError {
        status: StatusCode::FORBIDDEN,
        kind: "invalid_request_error",
        message: message.into(),
        param: None,
        code: Some("forbidden"),
    }
    .into_response()
}

/// The access check in front of every route.
pub async fn guard(
    State(config): State<Arc<ApiConfig>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    // Health probes may use any name; everything else answers only to the names this
    // node serves (a request without any name comes from no browser).
    if path != "/healthz"
        && let Some(host) = request_host(&request)
        && !host_is_served(&host, &config.public_names)
    {
        return forbidden(format!(
            "this node does not serve the name {host:?}: only its IP addresses, localhost and the names given with --public-name"
        ));
    }
    let origin = request.headers().get(header::ORIGIN).cloned();
    // Browsers send Origin on cross-site requests (and on the node's own page's POSTs);
    // tools and SDKs do not. An origin that is neither this node's own nor named by
    // --cors-origin gets nothing, not even a preflight.
    let allowed_origin = match &origin {
        None => None,
        Some(origin) if same_origin(origin.to_str().unwrap_or(""), request.headers()) => None,
        Some(origin) => {
            let text = origin.to_str().unwrap_or("");
            if !config.cors_origins.iter().any(|o| o == text) {
                return forbidden(format!(
                    "cross-origin requests from {text:?} are not allowed (see --cors-origin)"
                ));
            }
            Some(origin.clone())
        }
    };
    if request.method() == Method::OPTIONS
        && let Some(origin) = &allowed_origin
    {
        return preflight(origin);
    }
    if path != "/healthz" && !is_static(&path) {
        if let Err(response) = authorize(&config, peer, &path, request.headers()) {
            return *response;
        }
        // A page of another site can send a POST without asking first only with a simple
        // content type and no Authorization: JSON (or a key) means a CORS preflight,
        // which the origin check above refuses.
        let admin_post = request.method() == Method::POST && is_admin(&path);
        // Ollama's endpoints take a body of any type, as Ollama does (its documented curl
        // calls send none); the Origin check above still keeps other sites out.
        let needs_json = (is_generation(request.method(), &path) && !path.starts_with("/api/"))
            || (admin_post
                && !request.headers().contains_key(header::AUTHORIZATION)
                && !request.headers().contains_key("x-api-key"));
        if needs_json && !is_json(request.headers()) {
            return ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ..ApiError::bad_request(if admin_post {
                    "admin requests must have Content-Type: application/json (or carry the admin key)"
                } else {
                    "completion requests must have Content-Type: application/json"
                })
            }
            .into_response();
        }
    }
    let mut response = next.run(request).await;
    if let Some(origin) = allowed_origin {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// API keys on every /v1 path; the admin key (or loopback, when there is none and no
/// proxy forwarded the request) on the admin paths.
fn authorize(
    config: &ApiConfig,
    peer: SocketAddr,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), Box<Response>> {
    let token = bearer(headers);
    if is_admin(path) {
        if !config.admin_keys.is_empty() {
            return if one_of(token, &config.admin_keys) {
                Ok(())
            } else {
                Err(Box::new(forbidden(
                    "the admin endpoints need the admin key (--admin-key)",
                )))
            };
        }
        if !peer.ip().is_loopback() {
            return Err(Box::new(forbidden(
                "the admin endpoints answer only on loopback unless the node has --admin-key",
            )));
        }
        // A proxy on this host makes everyone's requests come from loopback.
        if let Some(header) = forwarded(headers) {
            return Err(Box::new(forbidden(format!(
                "this request came through a proxy ({header}): the admin endpoints answer on loopback only to requests sent there directly; give the node --admin-key"
            ))));
        }
    }
    if config.api_keys.is_empty() || one_of(token, &config.api_keys) {
        return Ok(());
    }
    Err(Box::new(unauthorized(if token.is_none() {
        "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
    } else {
        "Incorrect API key provided."
    })))
}

fn preflight(origin: &HeaderValue) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-api-key, anthropic-version"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_and_compared_exactly() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-1"),
        );
        assert_eq!(bearer(&headers), Some("sk-1"));
        let keys = vec!["sk-0".to_string(), "sk-1".to_string()];
        assert!(one_of(Some("sk-1"), &keys));
        assert!(!one_of(Some("sk-"), &keys));
        assert!(!one_of(Some("sk-10"), &keys));
        assert!(!one_of(None, &keys));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic sk-1"),
        );
        assert_eq!(bearer(&headers), None);
    }

    fn status(config: &ApiConfig, from: [u8; 4], path: &str, token: Option<&str>) -> u16 {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        match authorize(config, SocketAddr::from((from, 5000)), path, &headers) {
            Ok(()) => 200,
            Err(response) => response.status().as_u16(),
        }
    }

    #[test]
    fn only_the_exact_own_origin_is_same_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:52415"));
        assert!(same_origin("http://127.0.0.1:52415", &headers));
        assert!(same_origin("https://127.0.0.1:52415", &headers));
        assert!(!same_origin("http://127.0.0.1:52416", &headers));
        assert!(!same_origin(
            "http://127.0.0.1:52415.evil.example",
            &headers
        ));
        assert!(!same_origin("http://evil.example", &headers));
        assert!(!same_origin("null", &headers));
        assert!(!same_origin("127.0.0.1:52415", &headers));
        assert!(!same_origin("http://127.0.0.1:52415", &HeaderMap::new()));
    }

    #[test]
    fn only_the_names_a_node_serves_are_served() {
        let public = vec!["exo.example".to_string()];
        for host in [
            "127.0.0.1:52415",
            "10.0.0.7",
            "[::1]:52415",
            "[fe80::1]",
            "localhost:52415",
            "LOCALHOST.",
            "exo.example:443",
            "Exo.Example.",
        ] {
            assert!(host_is_served(host, &public), "{host}");
        }
        for host in [
            "evil.example:52415",
            "exo.example.evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1",
            "[evil]:52415",
            "",
        ] {
            assert!(!host_is_served(host, &public), "{host}");
        }
        assert!(!host_is_served("exo.example", &[]));
    }

    #[test]
    fn admin_endpoints_need_loopback_or_the_admin_key() {
        let lan = [10, 0, 0, 7];
        let local = [127, 0, 0, 1];
        let open = ApiConfig::default();
        assert_eq!(status(&open, lan, "/v1/resources/report", None), 403);
        assert_eq!(status(&open, lan, "/v1/resources/engine/reset", None), 403);
        assert_eq!(status(&open, local, "/v1/resources/report", None), 200);
        assert_eq!(status(&open, lan, "/v1/models", None), 200);
        let keyed = ApiConfig {
            api_keys: vec!["user".into()],
            admin_keys: vec!["root".into()],
            ..ApiConfig::default()
        };
        assert_eq!(status(&keyed, lan, "/v1/resources", Some("root")), 200);
        assert_eq!(status(&keyed, local, "/v1/resources", Some("user")), 403);
        assert_eq!(status(&keyed, local, "/v1/resources", None), 403);
        assert_eq!(status(&keyed, lan, "/v1/models", None), 401);
        assert_eq!(status(&keyed, lan, "/v1/models", Some("nope")), 401);
        assert_eq!(status(&keyed, lan, "/v1/models", Some("user")), 200);
        // No admin key: loopback, and the API key as for any /v1 path.
        let api_only = ApiConfig {
            api_keys: vec!["user".into()],
            ..ApiConfig::default()
        };
        assert_eq!(status(&api_only, local, "/v1/resources", None), 401);
        assert_eq!(status(&api_only, local, "/v1/resources", Some("user")), 200);
        assert_eq!(status(&api_only, lan, "/v1/resources", Some("user")), 403);
    }
}
