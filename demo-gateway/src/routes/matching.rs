//! What a route matches, and which of several matching routes wins.
//!
//! A route matches on its path (a prefix or one exact path, on the canonical
//! path), and optionally on the request's host, its method, headers and query
//! parameters, all of which must hold. When several routes match a request the
//! most specific wins, in the Gateway API's order (`HTTPRoute`, "matching
//! precedence"), each criterion deciding only when those before it tie:
//!
//! 1. the host: an exact hostname, then a wildcard (`*.example.com`), the
//!    longer first, then a route naming no host;
//! 2. the path: an exact path, then the longest prefix;
//! 3. a route naming methods over one taking any;
//! 4. more header matches;
//! 5. more query parameter matches;
//! 6. the order of the configuration.
//!
//! A route naming several hostnames is ranked by the one the request matched.

use std::cmp::Reverse;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// What a route matches on the canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Matcher {
    /// This path and everything under it, on segment boundaries.
    Prefix(Arc<str>),
    /// This path alone, with or without a trailing `/`.
    Path(Arc<str>),
}

impl Matcher {
    pub(crate) fn path(&self) -> &str {
        match self {
            Self::Prefix(p) | Self::Path(p) => p,
        }
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            Self::Prefix(prefix) => {
                path.strip_prefix(&**prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            Self::Path(exact) => path.strip_prefix(&**exact).is_some_and(|rest| rest.is_empty() || rest == "/"),
        }
    }

    fn rank(&self) -> (u8, Reverse<usize>) {
        match self {
            Self::Path(p) => (0, Reverse(p.len())),
            Self::Prefix(p) => (1, Reverse(p.len())),
        }
    }
}

/// A hostname a route matches, lower-case, without a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// This host.
    Exact(Box<str>),
    /// Any host ending in this suffix (`.example.com` for `*.example.com`):
    /// one label or more before it, never the bare domain.
    Wildcard(Box<str>),
}

impl HostMatch {
    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(exact) => host.eq_ignore_ascii_case(exact),
            Self::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }

    fn rank(this: Option<&Self>) -> (u8, Reverse<usize>) {
        match this {
            Some(Self::Exact(h)) => (0, Reverse(h.len())),
            Some(Self::Wildcard(s)) => (1, Reverse(s.len())),
            None => (2, Reverse(0)),
        }
    }

    /// A host this one matches, for the configuration's checks.
    fn example(&self) -> String {
        match self {
            Self::Exact(h) => h.to_string(),
            Self::Wildcard(s) => format!("x{s}"),
        }
    }
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// A header a route requires.
#[derive(Debug, Clone)]
pub(crate) enum HeaderMatch {
    /// Some value of the header is exactly this.
    Exact(HeaderName, HeaderValue),
    /// Some value of the header matches this expression whole.
    Regex(HeaderName, Arc<regex::bytes::Regex>),
}

impl PartialEq for HeaderMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a, x), Self::Exact(b, y)) => a == b && x == y,
            (Self::Regex(a, x), Self::Regex(b, y)) => a == b && x.as_str() == y.as_str(),
            _ => false,
        }
    }
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        match self {
            Self::Exact(name, value) => headers.get_all(name).iter().any(|v| v == value),
            Self::Regex(name, re) => headers.get_all(name).iter().any(|v| re.is_match(v.as_bytes())),
        }
    }
}

/// The largest compiled expression a header match may be: a pattern that
/// would compile to more is refused when the configuration is loaded.
pub(crate) const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// The longest pattern accepted.
pub(crate) const REGEX_MAX_LEN: usize = 256;

/// `pattern`, compiled to match a whole value, bounded in size; or why not.
pub(crate) fn header_regex(pattern: &str) -> Result<regex::bytes::Regex, String> {
    if pattern.len() > REGEX_MAX_LEN {
        return Err(format!("a pattern is at most {REGEX_MAX_LEN} bytes"));
    }
    regex::bytes::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

/// A query parameter's name and the value it must have.
pub(crate) type QueryMatch = (Box<str>, Box<str>);

/// Everything a route requires of a request besides its path and host.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Conditions {
    pub(crate) methods: Option<Box<[Method]>>,
    pub(crate) headers: Box<[HeaderMatch]>,
    /// Query parameters, name and value, compared decoded.
    pub(crate) query: Box<[QueryMatch]>,
}

impl Conditions {
    pub(crate) fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|methods| methods.contains(method))
    }

    fn holds(&self, req: &Facts<'_>) -> bool {
        self.headers.iter().all(|h| h.matches(req.headers))
            && self.query.iter().all(|(name, value)| {
                let first = req
                    .query
                    .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(n, _)| n == &**name).map(|(_, v)| v));
                first.is_some_and(|v| *v == **value)
            })
    }

    /// Whether every request meeting `other`'s headers and query meets these.
    fn implied_by(&self, other: &Self) -> bool {
        self.headers.iter().all(|h| other.headers.contains(h)) && self.query.iter().all(|q| other.query.contains(q))
    }
}

/// What routing reads of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    pub(crate) method: &'a Method,
    /// The canonical path.
    pub(crate) path: &'a str,
    /// The host, without its port.
    pub(crate) host: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) query: Option<&'a str>,
}

/// One way a route can match: the route, with one of its hostnames (or none).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) route: usize,
    pub(crate) host: Option<HostMatch>,
}

/// What [`rank`] sorts by: the most specific first.
pub(crate) type Rank = ((u8, Reverse<usize>), (u8, Reverse<usize>), bool, Reverse<usize>, Reverse<usize>);

/// An entry's place in the order of precedence (see the [module docs](self)).
pub(crate) fn rank(host: Option<&HostMatch>, path: &Matcher, conditions: &Conditions) -> Rank {
    (
        HostMatch::rank(host),
        path.rank(),
        conditions.methods.is_none(),
        Reverse(conditions.headers.len()),
        Reverse(conditions.query.len()),
    )
}

/// What [`recognize`] says of a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recognized {
    /// The index of the route that takes it.
    Route(usize),
    /// Routes take the request, but none with this method.
    MethodNotAllowed,
    /// No route takes it.
    NotFound,
}

/// A route as the matching sees it.
pub(crate) trait Matches {
    fn path(&self) -> &Matcher;
    fn conditions(&self) -> &Conditions;
}

/// The route for `req`: the first entry, in order of precedence, that matches
/// it whole.
pub(crate) fn recognize<R: Matches>(entries: &[Entry], routes: &[R], req: &Facts<'_>) -> Recognized {
    let mut but_method = false;
    for entry in entries {
        let route = &routes[entry.route];
        let host_ok = entry.host.as_ref().is_none_or(|h| req.host.is_some_and(|host| h.matches(host)));
        if !host_ok || !route.path().matches(req.path) || !route.conditions().holds(req) {
            continue;
        }
        if route.conditions().allows(req.method) {
            return Recognized::Route(entry.route);
        }
        but_method = true;
    }
    if but_method { Recognized::MethodNotAllowed } else { Recognized::NotFound }
}

/// For the configuration's checks: whether `entry` could take a request that
/// `from` takes with `method` in place of its own (`Some(true)`: surely,
/// `Some(false)`: for some such requests, `None`: never).
pub(crate) fn could_take<R: Matches>(routes: &[R], entry: &Entry, from: &Entry, method: &Method) -> Option<bool> {
    let (route, origin) = (&routes[entry.route], &routes[from.route]);
    if !route.conditions().allows(method) || !route.path().matches(origin.path().path()) {
        return None;
    }
    let host_sure = match (&entry.host, &from.host) {
        (None, _) => true,
        (Some(h), Some(f)) if h.matches(&f.example()) => match (h, f) {
            (HostMatch::Wildcard(s), HostMatch::Wildcard(t)) => t.ends_with(&**s),
            _ => true,
        },
        // A request to `from` could have any host, or a host under its wildcard.
        (Some(_), None) => false,
        (Some(HostMatch::Exact(h)), Some(HostMatch::Wildcard(s))) if h.ends_with(&**s) => false,
        (Some(HostMatch::Wildcard(s)), Some(HostMatch::Wildcard(t))) if s.ends_with(&**t) => false,
        (Some(_), Some(_)) => return None,
    };
    Some(host_sure && route.conditions().implied_by(origin.conditions()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_label_or_more_never_the_bare_domain() {
        let w = HostMatch::Wildcard(".example.com".into());
        assert!(w.matches("a.example.com"));
        assert!(w.matches("A.b.EXAMPLE.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("aexample.com"));
        assert!(!w.matches(".example.com"));
        let e = HostMatch::Exact("api.example.com".into());
        assert!(e.matches("API.example.com"));
        assert!(!e.matches("api.example.com.evil"));
    }

    #[test]
    fn a_header_pattern_matches_a_whole_value_and_a_huge_one_is_refused() {
        let re = header_regex("v[0-9]+").unwrap();
        assert!(re.is_match(b"v12"));
        assert!(!re.is_match(b"xv12"), "anchored: the whole value");
        assert!(!re.is_match(b"v12x"));
        assert!(header_regex(&"a".repeat(REGEX_MAX_LEN + 1)).is_err());
        // Small to write, enormous to compile: refused by the size limit.
        assert!(header_regex("(?:[a-z]{40}){40}").is_err());
        assert!(header_regex("(unclosed").is_err());
    }
}
