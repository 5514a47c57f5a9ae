//! Fetching a document over HTTP(S), bounded: connect and total timeouts, a body
//! cap, redirects followed only within the same origin.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How many same-origin redirects are followed.
const MAX_REDIRECTS: usize = 3;

/// How a fetch ended: a metric label each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchOutcome {
    /// A usable document was read.
    Ok,
    /// No connection, or it broke.
    Unreachable,
    /// No whole answer within the timeout.
    Timeout,
    /// An answer other than `200`.
    Status,
    /// A body over the cap.
    TooLarge,
    /// A redirect to another origin, or too many.
    Redirect,
    /// Not a key set or a discovery document, no usable key in it, or a
    /// discovery document naming another issuer.
    Invalid,
}

impl FetchOutcome {
    /// Every outcome, in the order of [`KeySourceStats::fetches`](crate::KeySourceStats::fetches).
    pub const ALL: [FetchOutcome; 7] =
        [Self::Ok, Self::Unreachable, Self::Timeout, Self::Status, Self::TooLarge, Self::Redirect, Self::Invalid];

    /// A stable name, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::Status => "status",
            Self::TooLarge => "too_large",
            Self::Redirect => "redirect",
            Self::Invalid => "invalid",
        }
    }

    pub(crate) fn index(self) -> usize {
        Self::ALL.iter().position(|o| *o == self).expect("listed")
    }
}

/// A fetch that failed: how, and what to log.
#[derive(Debug, Clone)]
pub(crate) struct FetchError {
    pub(crate) outcome: FetchOutcome,
    pub(crate) detail: String,
}

impl FetchError {
    pub(crate) fn new(outcome: FetchOutcome, detail: impl Into<String>) -> Self {
        Self { outcome, detail: detail.into() }
    }
}

/// A document and how long its server says it may be kept.
#[derive(Debug)]
pub(crate) struct Document {
    pub(crate) body: Bytes,
    pub(crate) max_age: Option<Duration>,
}

/// The limits of every fetch.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) connect_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) max_body: usize,
}

/// A small HTTP(S) client for key documents: no pool (fetches are minutes
/// apart), bounded in time and size.
#[derive(Clone)]
pub(crate) struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    limits: Limits,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Fetcher {
    pub(crate) fn new(limits: Limits, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(limits.connect_timeout));
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match tls {
            Some(config) => {
                let mut config = Arc::unwrap_or_clone(config);
                config.alpn_protocols.clear();
                builder.with_tls_config(config)
            }
            None => builder.with_webpki_roots(),
        };
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
        Self { client, limits }
    }

    /// GETs `url`, following same-origin redirects, within the total timeout.
    pub(crate) async fn get(&self, url: &Uri) -> Result<Document, FetchError> {
        match tokio::time::timeout(self.limits.timeout, self.get_following(url)).await {
            Ok(result) => result,
            Err(_) => {
                Err(FetchError::new(FetchOutcome::Timeout, format!("{url}: no answer in {:?}", self.limits.timeout)))
            }
        }
    }

    async fn get_following(&self, url: &Uri) -> Result<Document, FetchError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let request = Request::get(url.clone())
                .header(header::ACCEPT, "application/json")
                .body(Empty::new())
                .map_err(|e| FetchError::new(FetchOutcome::Invalid, format!("{url}: {e}")))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| FetchError::new(FetchOutcome::Unreachable, format!("{url}: {}", chain(&e))))?;
            let status = response.status();
            if status.is_redirection() {
                url = same_origin_redirect(&url, response.headers())?;
                continue;
            }
            if status != StatusCode::OK {
                return Err(FetchError::new(FetchOutcome::Status, format!("{url}: {status}")));
            }
            let too_large =
                || FetchError::new(FetchOutcome::TooLarge, format!("{url}: over {} bytes", self.limits.max_body));
            let declared =
                response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|len| len > self.limits.max_body as u64) {
                return Err(too_large());
            }
            let max_age = max_age(response.headers());
            let body = Limited::new(response.into_body(), self.limits.max_body).collect().await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    FetchError::new(FetchOutcome::Unreachable, format!("{url}: {e}"))
                }
            })?;
            return Ok(Document { body: body.to_bytes(), max_age });
        }
        Err(FetchError::new(FetchOutcome::Redirect, format!("{url}: more than {MAX_REDIRECTS} redirects")))
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where a redirect from `from` leads, if it stays on the same scheme, host and
/// port: a key set served from elsewhere would be trusted as the issuer's.
pub(crate) fn same_origin_redirect(from: &Uri, headers: &HeaderMap) -> Result<Uri, FetchError> {
    let refuse = |why: &str| FetchError::new(FetchOutcome::Redirect, format!("{from}: {why}"));
    let location = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refuse("a redirect without a Location"))?;
    let to: Uri = location.parse().map_err(|_| refuse("a redirect to an unreadable Location"))?;
    if to.scheme().is_none() && to.authority().is_none() {
        // A path on the same origin.
        if !location.starts_with('/') || location.starts_with("//") {
            return Err(refuse("a relative redirect"));
        }
        let mut parts = from.clone().into_parts();
        parts.path_and_query = to.path_and_query().cloned();
        return Uri::from_parts(parts).map_err(|_| refuse("a redirect to an unreadable Location"));
    }
    let port = |u: &Uri| {
        u.port_u16().or(match u.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        })
    };
    let same = to.scheme() == from.scheme()
        && to.host().map(str::to_ascii_lowercase) == from.host().map(str::to_ascii_lowercase)
        && port(&to) == port(from);
    if !same {
        return Err(refuse(&format!("a redirect to another origin ({location})")));
    }
    Ok(to)
}

/// `Cache-Control: max-age` of a response; `no-store` and `no-cache` count as zero.
pub(crate) fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut age = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        for directive in value.to_str().ok()?.split(',').map(str::trim) {
            let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
            match name.to_ascii_lowercase().as_str() {
                "no-store" | "no-cache" => return Some(Duration::ZERO),
                "max-age" => age = value.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs),
                _ => {}
            }
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn cache_control_gives_the_max_age() {
        let age = |v: &str| max_age(&headers(header::CACHE_CONTROL, v));
        assert_eq!(age("public, max-age=3600, must-revalidate"), Some(Duration::from_secs(3600)));
        assert_eq!(age("MAX-AGE=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(age("no-cache"), Some(Duration::ZERO));
        assert_eq!(age("max-age=60, no-store"), Some(Duration::ZERO));
        assert_eq!(age("public"), None);
        assert_eq!(age("max-age=soon"), None);
        assert_eq!(max_age(&HeaderMap::new()), None);
    }

    #[test]
    fn redirects_stay_on_the_same_origin() {
        let from: Uri = "https://idp.example.com/keys".parse().unwrap();
        let to = |location: &str| same_origin_redirect(&from, &headers(header::LOCATION, location));
        assert_eq!(to("/v2/keys").unwrap(), "https://idp.example.com/v2/keys");
        assert_eq!(to("https://IDP.example.com:443/v2/keys").unwrap(), "https://IDP.example.com:443/v2/keys");
        for elsewhere in [
            "https://attacker.example/keys",
            "http://idp.example.com/keys",
            "https://idp.example.com:8443/keys",
            "//attacker.example/keys",
            "keys2",
        ] {
            assert_eq!(to(elsewhere).unwrap_err().outcome, FetchOutcome::Redirect, "{elsewhere}");
        }
        assert_eq!(same_origin_redirect(&from, &HeaderMap::new()).unwrap_err().outcome, FetchOutcome::Redirect);
    }
}
