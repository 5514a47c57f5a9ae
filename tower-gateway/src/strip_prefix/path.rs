//! The path policy of [`StripPrefix`](super::StripPrefix): what a path must be
//! to be matched at all, and the one spelling each accepted path is matched in.

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused. See the [module docs](super) for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `.` or `..` segment, however spelled.
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A backslash, raw or percent-encoded.
    Backslash,
    /// A percent-encoded `/`.
    EncodedSlash,
    /// A percent-encoded control character, NUL included.
    ControlCharacter,
    /// A double-encoded dot, slash or backslash (`%252e`).
    DoubleEncoded,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// A `;` path parameter, raw or percent-encoded.
    Parameter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "the path must start with '/'",
            Self::DotSegment => "the path must not contain '.' or '..' segments",
            Self::EmptySegment => "the path must not contain empty segments ('//')",
            Self::Backslash => "the path must not contain backslashes",
            Self::EncodedSlash => "the path must not contain encoded slashes ('%2F')",
            Self::ControlCharacter => "the path must not contain control characters",
            Self::DoubleEncoded => "the path must not contain double-encoded separators",
            Self::BadPercentEncoding => "the path contains malformed percent-encoding",
            Self::Parameter => "the path must not contain ';' parameters",
        })
    }
}

impl std::error::Error for PathError {}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes the `%XY` escape starting at `bytes[i]`.
fn escape_at(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(PathError::BadPercentEncoding),
    }
}

/// Is `segment` (without its `;` parameters) `.` or `..`, with dots possibly
/// percent-encoded?
fn is_dot_segment(segment: &[u8]) -> bool {
    let name = segment.split(|&b| b == b';').next().unwrap_or_default();
    let mut dots = 0;
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'.' {
            i += 1;
        } else if name[i..].len() >= 3 && name[i] == b'%' && name[i + 1] == b'2' && name[i + 2] | 0x20 == b'e' {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Checks that `path` is canonical: see the [module docs](super) for what is refused.
pub fn check_path(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'%' => match escape_at(bytes, i)? {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                b'%' if escape_at(bytes, i + 2).is_ok() => return Err(PathError::DoubleEncoded),
                _ => {}
            },
            _ => {}
        }
    }
    let mut segments = bytes[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
        if is_dot_segment(segment) {
            return Err(PathError::DotSegment);
        }
        if segment.contains(&b';') || segment.windows(3).any(|w| w[0] == b'%' && w[1] == b'3' && w[2] | 0x20 == b'b') {
            return Err(PathError::Parameter);
        }
    }
    Ok(())
}

/// The canonical form of `path`, or why it has none: [`check_path`]'s rules, then
/// percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded and the
/// remaining escapes upper-cased. Borrowed when `path` is already canonical.
/// Two spellings that a backend decodes to the same path have the same canonical
/// form, so matching on it cannot be fooled by encoding.
///
/// ```
/// use tower_gateway::strip_prefix::{canonicalize, PathError};
///
/// assert_eq!(canonicalize("/api/users/%61dmin/x%2d1").unwrap(), "/api/users/admin/x-1");
/// assert_eq!(canonicalize("/a%20b%3a").unwrap(), "/a%20b%3A");
/// assert_eq!(canonicalize("/api/users/admin;x=1"), Err(PathError::Parameter));
/// ```
pub fn canonicalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    check_path(path)?;
    let bytes = path.as_bytes();
    let needs_work = |i: usize| {
        bytes[i] == b'%'
            && escape_at(bytes, i)
                .is_ok_and(|b| is_unreserved(b) || bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase))
    };
    let Some(first) = (0..bytes.len()).find(|&i| needs_work(i)) else {
        return Ok(Cow::Borrowed(path));
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut i = first;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let decoded = escape_at(bytes, i)?;
            if is_unreserved(decoded) {
                out.push(decoded);
            } else {
                out.push(b'%');
                out.extend(bytes[i + 1..i + 3].iter().map(u8::to_ascii_uppercase));
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Only ASCII was replaced by ASCII, so the bytes are as UTF-8 as the input was.
    Ok(Cow::Owned(String::from_utf8(out).expect("ASCII replaced by ASCII")))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Strips `prefix` (canonical, without a trailing `/`; empty for the root) from
/// `path` on a segment boundary.
///
/// Returns `Ok(Some(rest))` on a match, where `rest` is the rest of the
/// [canonical](canonicalize) path, empty or starting with `/`; `Ok(None)` when the
/// path does not start with the prefix; and an error when the path is refused
/// (whether or not it matches).
///
/// ```
/// use tower_gateway::strip_prefix::{strip, PathError};
///
/// assert_eq!(strip("/api/products", "/api/products/item").unwrap().as_deref(), Some("/item"));
/// assert_eq!(strip("/api/products", "/api/%70roducts/%69tem").unwrap().as_deref(), Some("/item"));
/// assert_eq!(strip("/api/products", "/api/products").unwrap().as_deref(), Some(""));
/// assert_eq!(strip("/api/products", "/api/productsX").unwrap(), None);
/// assert_eq!(strip("/api/products", "/api/products/%2e%2e/checkout"), Err(PathError::DotSegment));
/// ```
pub fn strip<'a>(prefix: &str, path: &'a str) -> Result<Option<Cow<'a, str>>, PathError> {
    let matches = |path: &str| path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    Ok(match canonicalize(path)? {
        Cow::Borrowed(path) if matches(path) => Some(Cow::Borrowed(&path[prefix.len()..])),
        Cow::Owned(path) if matches(&path) => Some(Cow::Owned(path[prefix.len()..].to_owned())),
        _ => None,
    })
}
