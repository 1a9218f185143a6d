//! `path-rewrite`: rewrites the path sent upstream, either by replacing a prefix or with a
//! regular expression. The query is left as it is.

use gatehouse_plugin_sdk::{
    export_plugin, log, parse_config, Action, Hooks, Needs, Plugin, Request,
};
use regex_lite::Regex;
use serde::Deserialize;

/// The plugin's configuration: either the prefix keys or the regex keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    strip_prefix: Option<String>,
    add_prefix: Option<String>,
    regex: Option<String>,
    replacement: Option<String>,
}

/// How the path is rewritten.
#[derive(Debug)]
enum Rewrite {
    /// Removes `strip` (a whole-segment prefix, empty for none), then puts `add` in front.
    Prefix { strip: Option<String>, add: String },
    /// Replaces the first match of `regex` with `replacement` (`$1`, `${name}`, `$$`).
    Regex { regex: Regex, replacement: String },
}

impl Rewrite {
    fn from_config(config: Config) -> Result<Self, String> {
        match config {
            Config {
                regex: Some(_),
                strip_prefix: Some(_),
                ..
            }
            | Config {
                regex: Some(_),
                add_prefix: Some(_),
                ..
            }
            | Config {
                replacement: Some(_),
                strip_prefix: Some(_),
                ..
            }
            | Config {
                replacement: Some(_),
                add_prefix: Some(_),
                ..
            } => Err(
                "use either `strip_prefix`/`add_prefix` or `regex`/`replacement`, not both"
                    .to_string(),
            ),
            Config {
                regex: Some(pattern),
                replacement: Some(replacement),
                ..
            } => {
                let regex = Regex::new(&pattern).map_err(|e| format!("`regex` is invalid: {e}"))?;
                check_replacement(&regex, &replacement)?;
                Ok(Rewrite::Regex { regex, replacement })
            }
            Config {
                regex: Some(_),
                replacement: None,
                ..
            } => Err("`regex` needs a `replacement`".to_string()),
            Config {
                regex: None,
                replacement: Some(_),
                ..
            } => Err("`replacement` needs a `regex`".to_string()),
            Config {
                strip_prefix: None,
                add_prefix: None,
                ..
            } => Err(
                "set `strip_prefix` and/or `add_prefix`, or `regex` with `replacement`".to_string(),
            ),
            Config {
                strip_prefix,
                add_prefix,
                ..
            } => {
                let strip = strip_prefix
                    .map(|p| normalize_prefix("strip_prefix", &p))
                    .transpose()?;
                let add = add_prefix
                    .map(|p| normalize_prefix("add_prefix", &p))
                    .transpose()?;
                Ok(Rewrite::Prefix {
                    strip,
                    add: add.unwrap_or_default(),
                })
            }
        }
    }

    /// The new path, or `None` when this rewrite does not apply to `path`.
    fn apply(&self, path: &str) -> Option<String> {
        match self {
            Rewrite::Prefix { strip, add } => {
                let rest = match strip {
                    Some(prefix) => strip_segments(path, prefix)?,
                    None => path,
                };
                let joined = format!("{add}{rest}");
                Some(if joined.is_empty() {
                    "/".to_string()
                } else {
                    joined
                })
            }
            Rewrite::Regex { regex, replacement } => regex
                .is_match(path)
                .then(|| regex.replace(path, replacement.as_str()).into_owned()),
        }
    }
}

/// Checks a configured prefix and drops its trailing slashes (`/api/` works like `/api`).
fn normalize_prefix(key: &str, prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err(format!("`{key}` must start with '/': {prefix:?}"));
    }
    if prefix.contains(['?', '#']) || prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "`{key}` must be a path without query, fragment or spaces: {prefix:?}"
        ));
    }
    Ok(prefix.trim_end_matches('/').to_string())
}

/// `path` without `prefix` when the prefix ends on a segment boundary (`/api` matches `/api`
/// and `/api/x`, not `/apix`); the rest is empty or starts with `/`.
fn strip_segments<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Refuses references to groups the regex does not have: `$1a` means group `1a`, which is
/// almost always a mistake for `${1}a`.
fn check_replacement(regex: &Regex, replacement: &str) -> Result<(), String> {
    let mut rest = replacement;
    while let Some(dollar) = rest.find('$') {
        let after = &rest[dollar + 1..];
        let (name, next) = if let Some(escaped) = after.strip_prefix('$') {
            rest = escaped;
            continue;
        } else if let Some(braced) = after.strip_prefix('{') {
            match braced.split_once('}') {
                Some((name, next)) => (name, next),
                None => break,
            }
        } else {
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            after.split_at(len)
        };
        if !name.is_empty() {
            let exists = match name.parse::<usize>() {
                Ok(index) => index < regex.captures_len(),
                Err(_) => regex.capture_names().any(|group| group == Some(name)),
            };
            if !exists {
                return Err(format!(
                    "`replacement` refers to group `{name}`, which `regex` does not have \
                     (write `${{1}}x` to follow group 1 with text)"
                ));
            }
        }
        rest = next;
    }
    Ok(())
}

/// Rewrites the upstream path.
#[derive(Debug)]
pub struct PathRewrite {
    rewrite: Rewrite,
}

impl Plugin for PathRewrite {
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    /// The path and query only: no header.
    fn needs(&self) -> Needs {
        Needs::new(Self::HOOKS)
    }

    fn configure(config: &str) -> Result<Self, String> {
        Ok(PathRewrite {
            rewrite: Rewrite::from_config(parse_config(config)?)?,
        })
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        let path = req.path();
        if let Some(new_path) = self.rewrite.apply(&path) {
            if !new_path.starts_with('/') {
                return Err(format!(
                    "rewriting {path:?} gave {new_path:?}, which does not start with '/'"
                ));
            }
            if new_path != path {
                log::debug(&format!("path {path:?} -> {new_path:?}"));
                req.set_path(&new_path)?;
            }
        }
        Ok(Action::Proceed)
    }
}

export_plugin!(PathRewrite);

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(config: &str, target: &str) -> (String, Option<String>) {
        let plugin = PathRewrite::configure(config).unwrap();
        let req = Request::new("GET", target);
        assert_eq!(plugin.on_request(&req).unwrap(), Action::Proceed);
        (req.path(), req.query())
    }

    #[test]
    fn replaces_a_prefix_and_keeps_the_query() {
        let config = r#"{"strip_prefix": "/api", "add_prefix": "/v2"}"#;
        assert_eq!(
            rewrite(config, "/api/users?page=2"),
            ("/v2/users".into(), Some("page=2".into()))
        );
        assert_eq!(rewrite(config, "/api").0, "/v2");
        assert_eq!(rewrite(config, "/api/").0, "/v2/");
    }

    #[test]
    fn strips_whole_segments_only() {
        let config = r#"{"strip_prefix": "/api/"}"#;
        assert_eq!(rewrite(config, "/api/users").0, "/users");
        assert_eq!(rewrite(config, "/api").0, "/");
        assert_eq!(rewrite(config, "/apix/users").0, "/apix/users");
        assert_eq!(rewrite(config, "/other").0, "/other");
    }

    #[test]
    fn unmatched_strip_prefix_adds_nothing() {
        let config = r#"{"strip_prefix": "/api", "add_prefix": "/v2"}"#;
        assert_eq!(rewrite(config, "/health").0, "/health");
    }

    #[test]
    fn adds_a_prefix() {
        let config = r#"{"add_prefix": "/backend/"}"#;
        assert_eq!(rewrite(config, "/users").0, "/backend/users");
        assert_eq!(rewrite(config, "/").0, "/backend/");
    }

    #[test]
    fn regex_replacement() {
        let config = r#"{"regex": "^/old/(.*)$", "replacement": "/new/$1"}"#;
        assert_eq!(
            rewrite(config, "/old/a/b?x=1"),
            ("/new/a/b".into(), Some("x=1".into()))
        );
        assert_eq!(rewrite(config, "/other").0, "/other");
        let named = r#"{"regex": "^/users/(?P<id>\\d+)$", "replacement": "/v1/user/${id}x$$"}"#;
        assert!(PathRewrite::configure(named).is_ok());
        let config = r#"{"regex": "^/u/(?P<id>\\d+)/(\\w+)$", "replacement": "/users/${id}-$2"}"#;
        assert_eq!(rewrite(config, "/u/42/profile").0, "/users/42-profile");
    }

    #[test]
    fn regex_result_must_be_a_path() {
        let plugin =
            PathRewrite::configure(r#"{"regex": "^/(.*)$", "replacement": "$1"}"#).unwrap();
        let err = plugin.on_request(&Request::new("GET", "/x")).unwrap_err();
        assert!(err.contains("does not start with '/'"), "{err}");
    }

    #[test]
    fn config_errors() {
        let err = |config: &str| PathRewrite::configure(config).unwrap_err();
        assert!(err("{}").contains("set `strip_prefix`"));
        assert!(err(r#"{"strip_prefix": "api"}"#).contains("must start with '/'"));
        assert!(err(r#"{"add_prefix": "/a?b"}"#).contains("without query"));
        assert!(err(r#"{"regex": "^/(.*)$"}"#).contains("needs a `replacement`"));
        assert!(err(r#"{"replacement": "/x"}"#).contains("needs a `regex`"));
        assert!(err(r#"{"regex": "(", "replacement": "/"}"#).contains("`regex` is invalid"));
        assert!(err(r#"{"regex": "^/(.*)$", "replacement": "/$1a"}"#).contains("group `1a`"));
        assert!(err(r#"{"regex": "^/(.*)$", "replacement": "/$2"}"#).contains("group `2`"));
        assert!(err(r#"{"regex": "^/(.*)$", "replacement": "/${name}"}"#).contains("group `name`"));
        assert!(
            err(r#"{"regex": "^/(.*)$", "replacement": "/$1", "strip_prefix": "/a"}"#)
                .contains("not both")
        );
    }
}
