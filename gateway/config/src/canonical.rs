//! The one canonical form of a request path, decided once before routing.
//!
//! The router, the plugins, the backend path template and the request sent upstream all see the
//! same canonical path, so no other spelling of a path can reach an API (or its backend) without
//! that API's plugins. The rules, applied in one pass:
//!
//! - the path must be origin-form (start with `/`);
//! - percent-encoded unreserved characters (RFC 3986 2.3: `A-Z a-z 0-9 - . _ ~`) are decoded;
//!   every other escape keeps its encoding with upper-case hex digits (`%c3%a9` → `%C3%A9`);
//! - characters that RFC 3986 does not allow raw in a path (`"`, `<`, `{`, bytes ≥ 0x80, ...) are
//!   percent-encoded;
//! - consecutive slashes are merged into one (nginx's `merge_slashes`, on by default);
//! - refused: an encoded slash `%2F` (unless allowed) or backslash `%5C`, a raw backslash, NUL and
//!   other control characters raw or encoded, a malformed escape, and `.` or `..` segments in
//!   any spelling, with `;` parameters too (`/..;/`, which Java servers resolve as `..`). Dot
//!   segments are refused rather than resolved: clients resolve them before sending (browsers,
//!   curl), so one that arrives is a probe, and refusing it leaves no room for a backend to
//!   resolve it differently from the gateway.

use std::borrow::Cow;
use std::fmt;

/// How paths are brought to their canonical form (`instance.http` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Merge `//` into `/`.
    pub merge_slashes: bool,
    /// Keep `%2F` (encoded) instead of refusing the request.
    pub allow_encoded_slashes: bool,
}

impl From<&crate::HttpOptions> for PathRules {
    fn from(http: &crate::HttpOptions) -> Self {
        Self {
            merge_slashes: http.merge_slashes,
            allow_encoded_slashes: http.allow_encoded_slashes,
        }
    }
}

impl Default for PathRules {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            allow_encoded_slashes: false,
        }
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    EncodedSlash,
    Backslash,
    Control,
    BadEscape,
    DotSegment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotOriginForm => "the request target must be a path starting with '/'",
            PathError::EncodedSlash => "the path contains an encoded slash (%2F)",
            PathError::Backslash => "the path contains a backslash, raw or encoded (%5C)",
            PathError::Control => "the path contains a control character, raw or encoded",
            PathError::BadEscape => "the path contains a '%' not followed by two hex digits",
            PathError::DotSegment => "the path contains a '.' or '..' segment",
        })
    }
}

/// Byte classes, one table lookup per byte.
const PLAIN: u8 = 1; // allowed raw and already canonical: unreserved, sub-delims, ':', '@'
const UNRESERVED: u8 = 2;

const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let unreserved = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        let sub_delim = matches!(
            c,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        );
        if unreserved {
            t[b] = PLAIN | UNRESERVED;
        } else if sub_delim || c == b':' || c == b'@' {
            t[b] = PLAIN;
        }
        b += 1;
    }
    t
}

static CLASS: [u8; 256] = classes();

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Whether `path` is canonical already, so the common request costs one scan and no allocation.
fn already_canonical(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut segment_start = 0;
    for (i, &b) in path.iter().enumerate() {
        if b == b'/' {
            if i > 0 && !segment_ok(&path[segment_start..i]) {
                return false;
            }
            segment_start = i + 1;
        } else if CLASS[b as usize] & PLAIN == 0 {
            return false;
        }
    }
    segment_ok(&path[segment_start..])
}

/// A segment between two slashes: empty (a doubled slash) or a dot segment are not canonical. The
/// last segment may be empty (a trailing slash).
fn segment_ok(segment: &[u8]) -> bool {
    !is_dot_segment(segment)
}

/// `.` or `..`, also with path parameters (`..;x`, `..%3B`): servlet containers drop what
/// follows a `;` in a segment before resolving dot segments.
fn is_dot_segment(segment: &[u8]) -> bool {
    let raw_end = segment.iter().position(|&b| b == b';');
    let encoded_end = segment
        .windows(3)
        .position(|w| w[0] == b'%' && w[1] == b'3' && (w[2] == b'B' || w[2] == b'b'));
    let end = match (raw_end, encoded_end) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(segment.len()),
    };
    matches!(&segment[..end], b"." | b"..")
}

/// The canonical form of `path`: borrowed when it already is canonical. Consecutive slashes are
/// only an issue when `rules.merge_slashes` is on.
pub fn canonicalize<'a>(path: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, PathError> {
    let bytes = path.as_bytes();
    if already_canonical(bytes) && (!rules.merge_slashes || !has_double_slash(bytes)) {
        return Ok(Cow::Borrowed(path));
    }
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                if CLASS[v as usize] & UNRESERVED != 0 {
                    out.push(v);
                } else if v == b'/' {
                    if !rules.allow_encoded_slashes {
                        return Err(PathError::EncodedSlash);
                    }
                    out.extend_from_slice(b"%2F");
                } else if v == b'\\' {
                    return Err(PathError::Backslash);
                } else if is_control(v) {
                    return Err(PathError::Control);
                } else {
                    out.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 15) as usize]]);
                }
                i += 3;
                continue;
            }
            b'/' => {
                if !(rules.merge_slashes && out.last() == Some(&b'/')) {
                    out.push(b'/');
                }
            }
            b'\\' => return Err(PathError::Backslash),
            b if is_control(b) => return Err(PathError::Control),
            b if CLASS[b as usize] & PLAIN != 0 => out.push(b),
            b => out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
        }
        i += 1;
    }
    if out.split(|&b| b == b'/').any(is_dot_segment) {
        return Err(PathError::DotSegment);
    }
    // Only ASCII was pushed (every byte ≥ 0x80 was percent-encoded), so this cannot fail; if it
    // ever did, the request is refused rather than the gateway panicking.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::BadEscape)
}

fn has_double_slash(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"//")
}

/// Appends `value` percent-encoded for the query part of a URI: a value can never add a
/// parameter (`&`, `=`), a fragment (`#`) or a space (`+`) there. Escapes already in `value` are
/// kept, so a canonical path value is not encoded twice.
pub fn push_query_value(out: &mut String, value: &str) {
    for &b in value.as_bytes() {
        match b {
            b'&' | b'=' | b'+' | b'#' | b';' => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
            _ => out.push(b as char),
        }
    }
}

/// Decodes the percent escapes of a query parameter name or value (and `+` as a space), to
/// compare them the way backends and the standard plugins read them; an invalid escape stays as
/// it is.
pub fn decode_query_name(name: &str) -> Cow<'_, str> {
    if !name.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(name);
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(p: &str) -> Result<String, PathError> {
        canonicalize(p, &PathRules::default()).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/users/42",
            "/a/b/",
            "/a;b=c/@x:y/~u_v-w.z",
            "/.well-known/x",
        ] {
            assert!(
                matches!(canonicalize(p, &PathRules::default()), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn spellings_meet_in_one_form() {
        let cases = [
            ("//admin/x", "/admin/x"),
            ("///admin//x//", "/admin/x/"),
            ("/%61dmin/x", "/admin/x"),
            ("/%41%44%4d%49%4E", "/ADMIN"),
            ("/a%7e%5f%2d%2E", "/a~_-."),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a\"b{c}", "/a%22b%7Bc%7D"),
            ("/a%3fb", "/a%3Fb"),
        ];
        for (spelling, canonical) in cases {
            assert_eq!(canon(spelling).as_deref(), Ok(canonical), "{spelling}");
        }
    }

    #[test]
    fn dangerous_spellings_are_refused() {
        let cases = [
            ("admin/x", PathError::NotOriginForm),
            ("", PathError::NotOriginForm),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::Backslash),
            ("/a\\b", PathError::Backslash),
            ("/a%00b", PathError::Control),
            ("/a%0d%0ab", PathError::Control),
            ("/a%7fb", PathError::Control),
            ("/a\u{1}b", PathError::Control),
            ("/a%zzb", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a/../b", PathError::DotSegment),
            ("/a/./b", PathError::DotSegment),
            ("/a/%2e%2E/b", PathError::DotSegment),
            ("/a/.%2e", PathError::DotSegment),
            ("/..", PathError::DotSegment),
            ("/pub/..;/admin/x", PathError::DotSegment),
            ("/pub/..;jsessionid=1/admin", PathError::DotSegment),
            ("/pub/.;/admin", PathError::DotSegment),
            ("/pub/%2e%2e;/admin", PathError::DotSegment),
            ("/pub/..%3b/admin", PathError::DotSegment),
            ("/pub/..%3Bx/admin", PathError::DotSegment),
            ("/a//../b", PathError::DotSegment),
        ];
        for (spelling, error) in cases {
            assert_eq!(canon(spelling), Err(error), "{spelling}");
        }
    }

    #[test]
    fn options_change_slashes() {
        let keep = PathRules {
            merge_slashes: false,
            allow_encoded_slashes: true,
        };
        assert_eq!(canonicalize("//a//b", &keep).unwrap(), "//a//b");
        assert_eq!(canonicalize("/a%2fb", &keep).unwrap(), "/a%2Fb");
        assert_eq!(canonicalize("/a%5cb", &keep), Err(PathError::Backslash));
    }

    #[test]
    fn query_values_cannot_add_parameters() {
        let mut out = String::new();
        push_query_value(&mut out, "7&admin=true#x+y;z");
        assert_eq!(out, "7%26admin%3Dtrue%23x%2By%3Bz");
        assert_eq!(decode_query_name("us%65r"), "user");
        assert_eq!(decode_query_name("a+b"), "a b");
    }

    /// A path of plain segments, the canonical form the spellings below are made from.
    fn plain_path() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-zA-Z0-9_~-]{1,6}", 1..5).prop_map(|s| format!("/{}", s.join("/")))
    }

    /// Another spelling of `path`: escapes with either hex case, doubled slashes, dot segments.
    fn respell(path: &str, choices: &[u8]) -> String {
        let mut out = String::new();
        for (i, c) in path.chars().enumerate() {
            let choice = choices[i % choices.len()];
            match (c, choice % 6) {
                ('/', 1) => out.push_str("//"),
                ('/', 2) => out.push_str("/./"),
                ('/', 3) => out.push_str("/x/../"),
                ('/', 4) => out.push_str("/%2e%2E/"),
                (c, 1) if c != '/' => out.push_str(&format!("%{:02x}", c as u32)),
                (c, 2) if c != '/' => out.push_str(&format!("%{:02X}", c as u32)),
                (c, 3) if c != '/' => out.push_str(&format!("%{:02x}", c as u32).to_uppercase()),
                (c, _) => out.push(c),
            }
        }
        out
    }

    proptest! {
        #[test]
        fn every_spelling_is_the_canonical_path_or_refused(
            path in plain_path(),
            choices in prop::collection::vec(any::<u8>(), 1..32),
        ) {
            let spelling = respell(&path, &choices);
            match canon(&spelling) {
                Ok(c) => prop_assert_eq!(c, path),
                Err(e) => prop_assert!(
                    matches!(e, PathError::DotSegment),
                    "{} refused with {:?}", spelling, e
                ),
            }
        }

        #[test]
        fn canonical_form_is_a_fixed_point(raw in "[ -~\u{80}-\u{ff}]{0,40}") {
            let path = format!("/{raw}");
            if let Ok(c) = canon(&path) {
                let again = canonicalize(&c, &PathRules::default()).unwrap();
                prop_assert_eq!(&again, &c, "{} → {} → {}", path, c, again);
                prop_assert!(c.parse::<http::Uri>().is_ok(), "{} is not a URI path", c);
            }
        }
    }
}
