//! API path patterns (`/users/{id}`, `/static/{*rest}`) and the backend path templates that reuse
//! their parameters (`/v1/users/{id}`).
//!
//! A pattern is a `/`-separated list of segments. A segment is a literal, a `{name}` parameter that
//! matches one whole segment, or — last only — a `{*name}` wildcard that matches the rest of the path
//! (one or more segments; `/static/{*rest}` also matches `/static/`). The router (in the proxy) uses
//! [`PathPattern::route_shape`], where parameters are renamed by position, so two patterns that
//! differ only in parameter names are recognised as the same route.

use std::fmt;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    Wildcard(String),
}

/// A validated API path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    segments: Vec<Segment>,
}

impl PathPattern {
    /// Parses a pattern; the error is a message for the user (no path prefix).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(format!("path pattern {raw:?} must start with '/'"));
        };
        let mut segments = Vec::new();
        if rest.is_empty() {
            return Ok(Self {
                raw: raw.to_owned(),
                segments,
            });
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let last = parts.len() - 1;
        for (i, part) in parts.iter().enumerate() {
            let segment =
                if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    if let Some(name) = inner.strip_prefix('*') {
                        if i != last {
                            return Err(format!(
                                "wildcard {part:?} in {raw:?} must be the last segment"
                            ));
                        }
                        check_param_name(name, raw)?;
                        Segment::Wildcard(name.to_owned())
                    } else {
                        check_param_name(inner, raw)?;
                        Segment::Param(inner.to_owned())
                    }
                } else {
                    if part.is_empty() && i != last {
                        return Err(format!("path pattern {raw:?} has an empty segment ('//')"));
                    }
                    if let Some(c) = part.chars().find(|c| !is_path_char(*c)) {
                        return Err(format!(
                        "path pattern {raw:?} has {c:?} in a literal segment; parameters are whole \
                         segments like {{id}}, other characters must be URL path characters"
                    ));
                    }
                    let slash = format!("/{part}");
                    match crate::canonical::canonicalize(&slash, &Default::default()) {
                        Ok(c) if c == slash => {}
                        Ok(c) => {
                            return Err(format!(
                                "path pattern {raw:?} has segment {part:?}, which requests spell \
                                 {:?} once their path is made canonical; write it that way",
                                &c[1..]
                            ))
                        }
                        Err(e) => {
                            return Err(format!(
                                "path pattern {raw:?} has segment {part:?}: {e}, so no request \
                                 could match it"
                            ))
                        }
                    }
                    Segment::Literal((*part).to_owned())
                };
            segments.push(segment);
        }
        let mut seen: Vec<&str> = Vec::new();
        for name in segments.iter().filter_map(Segment::param_name) {
            if seen.contains(&name) {
                return Err(format!("parameter {{{name}}} appears twice in {raw:?}"));
            }
            seen.push(name);
        }
        Ok(Self {
            raw: raw.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Parameter names in order, the wildcard (if any) last.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(Segment::param_name)
    }

    pub fn has_wildcard(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::Wildcard(_)))
    }

    /// The pattern in router syntax with parameters renamed by position (`/users/{p0}`), so that
    /// patterns differing only in parameter names map to the same route.
    pub fn route_shape(&self) -> String {
        self.shape(self.segments.len())
    }

    /// For a trailing wildcard, the shape of the bare prefix (`/static/` for `/static/{*rest}`),
    /// which the wildcard also matches with an empty value.
    pub fn wildcard_prefix_shape(&self) -> Option<String> {
        if !self.has_wildcard() {
            return None;
        }
        let mut s = self.shape(self.segments.len() - 1);
        if !s.ends_with('/') {
            s.push('/');
        }
        Some(s)
    }

    fn shape(&self, count: usize) -> String {
        let mut out = String::with_capacity(self.raw.len());
        let mut index = 0;
        for segment in &self.segments[..count] {
            out.push('/');
            match segment {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(_) => {
                    out.push_str(&format!("{{p{index}}}"));
                    index += 1;
                }
                Segment::Wildcard(_) => {
                    out.push_str(&format!("{{*p{index}}}"));
                    index += 1;
                }
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Segment {
    fn param_name(&self) -> Option<&str> {
        match self {
            Segment::Literal(_) => None,
            Segment::Param(n) | Segment::Wildcard(n) => Some(n),
        }
    }
}

fn check_param_name(name: &str, raw: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "parameter name {name:?} in {raw:?} must be letters, digits and '_', not starting \
             with a digit"
        ))
    }
}

/// RFC 3986 `pchar` (percent signs allowed for encoded octets).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%".contains(c)
}

/// One piece of a backend path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// Index of the frontend pattern's parameter (in [`PathPattern::params`] order).
    Param(usize),
}

/// A backend path such as `/v1/users/{id}`, its parameters resolved against the API's pattern. It
/// may carry a query (`/search?user={id}`), to which the request's own query is appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    raw: String,
    parts: Vec<TemplatePart>,
}

impl PathTemplate {
    /// Parses `raw` and resolves each `{name}` (or `{*name}`) to a parameter of `pattern`.
    pub fn parse(raw: &str, pattern: &PathPattern) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("backend path {raw:?} must start with '/'"));
        }
        let params: Vec<&str> = pattern.params().collect();
        let mut parts = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Literal(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("backend path {raw:?} has an unclosed '{{'"));
            };
            let name = &rest[open + 1..open + close];
            let name = name.strip_prefix('*').unwrap_or(name);
            let Some(index) = params.iter().position(|p| *p == name) else {
                return Err(format!(
                    "backend path {raw:?} uses {{{name}}}, which the API path {:?} does not \
                     define (it defines: {})",
                    pattern.as_str(),
                    if params.is_empty() {
                        "no parameters".to_owned()
                    } else {
                        params.join(", ")
                    }
                ));
            };
            parts.push(TemplatePart::Param(index));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("backend path {raw:?} has a '}}' without '{{'"));
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Literal(rest.to_owned()));
        }
        if let Some(c) = raw
            .chars()
            .find(|c| !"/{}?".contains(*c) && !is_path_char(*c))
        {
            return Err(format!(
                "backend path {raw:?} has {c:?}, not a URL path character"
            ));
        }
        Ok(Self {
            raw: raw.to_owned(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn parts(&self) -> &[TemplatePart] {
        &self.parts
    }

    /// Fills the template with parameter values (in pattern order) into `out`. `values` are
    /// segments of a canonical request path ([`crate::canonical`]), so in the path part of the
    /// template they cannot add segments, a query or a fragment; in the query part they are
    /// encoded so that they cannot add parameters either.
    pub fn render_into<'v>(&self, value: impl Fn(usize) -> &'v str, out: &mut String) {
        let mut in_query = false;
        for part in &self.parts {
            match part {
                TemplatePart::Literal(l) => {
                    in_query |= l.contains('?');
                    out.push_str(l);
                }
                TemplatePart::Param(i) if in_query => {
                    crate::canonical::push_query_value(out, value(*i))
                }
                TemplatePart::Param(i) => out.push_str(value(*i)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_rename_parameters_by_position() {
        let a = PathPattern::parse("/users/{id}/orders/{order}").unwrap();
        let b = PathPattern::parse("/users/{uid}/orders/{o}").unwrap();
        assert_eq!(a.route_shape(), "/users/{p0}/orders/{p1}");
        assert_eq!(a.route_shape(), b.route_shape());
    }

    #[test]
    fn wildcard_has_a_prefix_shape() {
        let p = PathPattern::parse("/static/{*rest}").unwrap();
        assert_eq!(p.route_shape(), "/static/{*p0}");
        assert_eq!(p.wildcard_prefix_shape().as_deref(), Some("/static/"));
        let root = PathPattern::parse("/{*all}").unwrap();
        assert_eq!(root.wildcard_prefix_shape().as_deref(), Some("/"));
        assert_eq!(PathPattern::parse("/").unwrap().route_shape(), "/");
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        let cases = [
            ("users", "must start with '/'"),
            ("/a//b", "empty segment"),
            ("/a/{*rest}/b", "must be the last segment"),
            ("/a/{1d}", "parameter name"),
            ("/a/{id}/{id}", "appears twice"),
            ("/a/x{id}", "literal segment"),
            ("/a b", "literal segment"),
            ("/%61dmin", "spell \"admin\""),
            ("/caf%c3%a9", "spell \"caf%C3%A9\""),
            ("/a/../b", "no request"),
        ];
        for (raw, expected) in cases {
            let err = PathPattern::parse(raw).expect_err(raw);
            assert!(err.contains(expected), "{raw}: {err}");
        }
    }

    #[test]
    fn template_renders_parameters_in_place() {
        let p = PathPattern::parse("/users/{id}/files/{*rest}").unwrap();
        let t = PathTemplate::parse("/v1/u/{id}.json/{*rest}", &p).unwrap();
        let mut out = String::new();
        let values = ["42", "a/b"];
        t.render_into(|i| values[i], &mut out);
        assert_eq!(out, "/v1/u/42.json/a/b");
    }

    #[test]
    fn template_refuses_unknown_parameter() {
        let p = PathPattern::parse("/users/{id}").unwrap();
        let err = PathTemplate::parse("/v1/{uid}", &p).unwrap_err();
        assert!(
            err.contains("does not define") && err.contains("id"),
            "{err}"
        );
    }
}
