//! What a plugin needs and what one plugin use is granted.
//!
//! A 0.2 plugin declares its [`Needs`] in `configure`; the operator grants each plugin use its
//! [`Grants`] (a documented default for the standard plugins). Declared needs beyond the grants
//! refuse the configuration at load, listing each missing grant. At run time the host enforces the
//! grants whatever the plugin declared: a header it may not read is not there for it, changing one
//! it may not write fails the call (`denied`) and rolls the call's edits back.

use gatehouse_config::{HeaderGrant, PluginGrants};
use http::HeaderName;

/// The hooks of a plugin, as bits in the WIT's flag order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HookSet(u8);

impl HookSet {
    pub const ON_REQUEST: HookSet = HookSet(1);
    pub const ON_UPSTREAM_REQUEST: HookSet = HookSet(2);
    pub const ON_RESPONSE: HookSet = HookSet(4);
    pub const ON_RESPONSE_BODY: HookSet = HookSet(8);
    /// The hooks of contract 0.1.
    pub const HEADER_HOOKS: HookSet = HookSet(7);
    pub const ALL: HookSet = HookSet(15);

    pub const NAMES: [(&'static str, HookSet); 4] = [
        ("on-request", HookSet::ON_REQUEST),
        ("on-upstream-request", HookSet::ON_UPSTREAM_REQUEST),
        ("on-response", HookSet::ON_RESPONSE),
        ("on-response-body", HookSet::ON_RESPONSE_BODY),
    ];

    pub const fn from_bits(bits: u8) -> Self {
        HookSet(bits & 15)
    }

    pub const fn contains(self, other: HookSet) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: HookSet) -> HookSet {
        HookSet(self.0 | other.0)
    }

    pub const fn intersect(self, other: HookSet) -> HookSet {
        HookSet(self.0 & other.0)
    }

    /// The set of the named hooks (names as in [`HookSet::NAMES`]; others are ignored, the
    /// configuration's validation refuses them).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        names.into_iter().fold(HookSet(0), |set, name| {
            match HookSet::NAMES.iter().find(|(n, _)| *n == name) {
                Some((_, hook)) => set.union(*hook),
                None => set,
            }
        })
    }

    fn names(self) -> impl Iterator<Item = &'static str> {
        HookSet::NAMES
            .into_iter()
            .filter(move |(_, h)| self.contains(*h))
            .map(|(n, _)| n)
    }
}

/// Header names and prefixes (`x-tenant-*`), or every header (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderSet {
    all: bool,
    names: Vec<String>,
    prefixes: Vec<String>,
}

impl HeaderSet {
    /// Every header.
    pub fn all() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    /// No header.
    pub fn none() -> Self {
        Self::default()
    }

    /// The set of `entries` (names, prefixes ending in `*`, or `*`), which must be valid
    /// ([`gatehouse_config::validate::header_pattern_problem`]).
    pub fn of<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut set = Self::none();
        for entry in entries {
            let entry = entry.as_ref();
            if let Some(problem) = gatehouse_config::validate::header_pattern_problem(entry) {
                return Err(format!("{entry:?}: {problem}"));
            }
            if entry == "*" {
                set.all = true;
            } else if let Some(prefix) = entry.strip_suffix('*') {
                set.prefixes.push(prefix.to_owned());
            } else {
                set.names.push(entry.to_owned());
            }
        }
        Ok(set)
    }

    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether the header `name` (lower case, as [`HeaderName`] holds it) is in the set.
    pub fn allows(&self, name: &HeaderName) -> bool {
        self.allows_str(name.as_str())
    }

    fn allows_str(&self, name: &str) -> bool {
        self.all
            || self.names.iter().any(|n| n == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// Whether every header a declared entry stands for is in the set.
    fn covers(&self, entry: &str) -> bool {
        if self.all {
            return true;
        }
        if entry == "*" {
            return false;
        }
        match entry.strip_suffix('*') {
            Some(prefix) => self.prefixes.iter().any(|p| prefix.starts_with(p.as_str())),
            None => self.allows_str(entry),
        }
    }
}

/// The headers of one message a plugin may read and write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderAccess {
    pub read: HeaderSet,
    pub write: HeaderSet,
}

impl HeaderAccess {
    fn all() -> Self {
        Self {
            read: HeaderSet::all(),
            write: HeaderSet::all(),
        }
    }

    fn of(grant: &HeaderGrant) -> Result<Self, String> {
        Ok(Self {
            read: HeaderSet::of(&grant.read)?,
            write: HeaderSet::of(&grant.write)?,
        })
    }
}

/// Header needs of one message, as declared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeclaredHeaders {
    pub read: Vec<String>,
    pub write: Vec<String>,
}

/// What a plugin declared in `configure`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Needs {
    pub hooks: HookSet,
    pub request_headers: DeclaredHeaders,
    pub response_headers: DeclaredHeaders,
    pub request_body: bool,
    pub response_body: bool,
    pub node_steering: bool,
    pub counters: bool,
}

impl Needs {
    /// Checks what the plugin declared is well formed: valid header patterns, and the body hook
    /// only with the response body.
    pub fn check(&self) -> Result<(), String> {
        for (what, list) in self.header_lists() {
            for entry in list {
                if let Some(problem) = gatehouse_config::validate::header_pattern_problem(entry) {
                    return Err(format!("declared {what} {entry:?}: {problem}"));
                }
            }
        }
        if self.hooks.contains(HookSet::ON_RESPONSE_BODY) != self.response_body {
            return Err(
                "declared on-response-body without response-body, or the reverse: the two go together"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// What the plugin declared, in one line of the configuration's words:
    /// `hooks on-request; request_headers.read authorization, x-tenant-*; request_body`.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!(
            "hooks {}",
            match self.hooks.names().collect::<Vec<_>>() {
                hooks if hooks.is_empty() => "none".to_owned(),
                hooks => hooks.join(", "),
            }
        )];
        for (what, list) in self.header_lists() {
            if !list.is_empty() {
                parts.push(format!("{what} {}", list.join(", ")));
            }
        }
        for (needed, what) in [
            (self.request_body, "request_body"),
            (self.response_body, "response_body"),
            (self.node_steering, "node_steering"),
            (self.counters, "counters"),
        ] {
            if needed {
                parts.push(what.to_owned());
            }
        }
        parts.join("; ")
    }

    fn header_lists(&self) -> [(&'static str, &[String]); 4] {
        [
            ("request_headers.read", &self.request_headers.read),
            ("request_headers.write", &self.request_headers.write),
            ("response_headers.read", &self.response_headers.read),
            ("response_headers.write", &self.response_headers.write),
        ]
    }
}

/// What one plugin use may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    pub hooks: HookSet,
    pub request: HeaderAccess,
    pub response: HeaderAccess,
    pub request_body: bool,
    pub response_body: bool,
    pub node_steering: bool,
    pub counters: bool,
}

impl Grants {
    /// What contract 0.1 gave every plugin: its hooks and every header, no body. 0.1 components
    /// declare nothing; without operator grants they keep this.
    pub fn contract_0_1() -> Self {
        Self {
            hooks: HookSet::HEADER_HOOKS,
            request: HeaderAccess::all(),
            response: HeaderAccess::all(),
            request_body: false,
            response_body: false,
            node_steering: false,
            counters: false,
        }
    }

    /// The grants of a 0.2 component file the operator granted nothing: its header hooks, the
    /// request line and the client address, no header and no body.
    pub fn baseline() -> Self {
        Self {
            hooks: HookSet::HEADER_HOOKS,
            request: HeaderAccess::default(),
            response: HeaderAccess::default(),
            request_body: false,
            response_body: false,
            node_steering: false,
            counters: false,
        }
    }

    /// Exactly what a plugin declared: the default of the standard plugins, which ship with the
    /// gateway.
    pub fn declared(needs: &Needs) -> Result<Self, String> {
        Ok(Self {
            hooks: needs.hooks,
            request: HeaderAccess {
                read: HeaderSet::of(&needs.request_headers.read)?,
                write: HeaderSet::of(&needs.request_headers.write)?,
            },
            response: HeaderAccess {
                read: HeaderSet::of(&needs.response_headers.read)?,
                write: HeaderSet::of(&needs.response_headers.write)?,
            },
            request_body: needs.request_body,
            response_body: needs.response_body,
            node_steering: needs.node_steering,
            counters: needs.counters,
        })
    }

    /// The operator's grants of a plugin use (validated with the configuration).
    pub fn configured(grants: &PluginGrants) -> Result<Self, String> {
        let hooks = match &grants.hooks {
            Some(names) => HookSet::from_names(names.iter().map(String::as_str)),
            None if grants.response_body => HookSet::ALL,
            None => HookSet::HEADER_HOOKS,
        };
        Ok(Self {
            hooks,
            request: HeaderAccess::of(&grants.request_headers)?,
            response: HeaderAccess::of(&grants.response_headers)?,
            request_body: grants.request_body,
            response_body: grants.response_body,
            node_steering: grants.node_steering,
            counters: grants.counters,
        })
    }

    /// The needs these grants do not cover, as `key: entry` in the configuration's words
    /// (`request_headers.read: authorization`, `request_body`, `hooks: on-response`).
    pub fn missing(&self, needs: &Needs) -> Vec<String> {
        let mut missing = Vec::new();
        for hook in needs.hooks.names() {
            let granted = HookSet::NAMES
                .iter()
                .any(|(n, h)| *n == hook && self.hooks.contains(*h));
            if !granted {
                missing.push(format!("hooks: {hook}"));
            }
        }
        let sets = [
            &self.request.read,
            &self.request.write,
            &self.response.read,
            &self.response.write,
        ];
        for ((what, declared), granted) in needs.header_lists().into_iter().zip(sets) {
            for entry in declared {
                if !granted.covers(entry) {
                    missing.push(format!("{what}: {entry}"));
                }
            }
        }
        if needs.request_body && !self.request_body {
            missing.push("request_body".to_owned());
        }
        if needs.response_body && !self.response_body {
            missing.push("response_body".to_owned());
        }
        if needs.node_steering && !self.node_steering {
            missing.push("node_steering".to_owned());
        }
        if needs.counters && !self.counters {
            missing.push("counters".to_owned());
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> HeaderSet {
        HeaderSet::of(entries).unwrap()
    }

    #[test]
    fn header_sets_match_names_prefixes_and_everything() {
        let s = set(&["authorization", "x-tenant-*"]);
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).unwrap();
        assert!(s.allows(&name("Authorization")));
        assert!(s.allows(&name("x-tenant-id")));
        assert!(s.allows(&name("x-tenant-")));
        assert!(!s.allows(&name("x-tenant")));
        assert!(!s.allows(&name("cookie")));
        assert!(set(&["*"]).allows(&name("cookie")));
        assert!(!HeaderSet::none().allows(&name("cookie")));
        assert!(HeaderSet::of(&["Authorization"]).is_err(), "upper case");
        assert!(HeaderSet::of(&["x-*-id"]).is_err(), "a star inside");
    }

    #[test]
    fn a_grant_covers_a_need_only_when_it_covers_every_header_of_it() {
        let s = set(&["x-tenant-*", "accept"]);
        assert!(s.covers("x-tenant-id"));
        assert!(s.covers("x-tenant-region-*"), "a narrower prefix");
        assert!(!s.covers("x-*"), "a wider prefix");
        assert!(!s.covers("*"));
        assert!(s.covers("accept"));
        assert!(!s.covers("accept-*"));
        assert!(set(&["*"]).covers("*"));
    }

    #[test]
    fn a_summary_lists_what_was_declared_in_the_configurations_words() {
        let needs = Needs {
            hooks: HookSet::ON_REQUEST.union(HookSet::ON_RESPONSE),
            request_headers: DeclaredHeaders {
                read: vec!["authorization".into(), "x-tenant-*".into()],
                write: vec![],
            },
            response_headers: DeclaredHeaders {
                read: vec![],
                write: vec!["x-served-by".into()],
            },
            request_body: true,
            counters: true,
            ..Needs::default()
        };
        assert_eq!(
            needs.summary(),
            "hooks on-request, on-response; request_headers.read authorization, x-tenant-*; \
             response_headers.write x-served-by; request_body; counters"
        );
        assert_eq!(Needs::default().summary(), "hooks none");
    }

    #[test]
    fn missing_grants_are_listed_in_the_configurations_words() {
        let needs = Needs {
            hooks: HookSet::ON_REQUEST.union(HookSet::ON_RESPONSE),
            request_headers: DeclaredHeaders {
                read: vec!["authorization".into(), "x-tenant-*".into()],
                write: vec!["x-user".into()],
            },
            response_headers: DeclaredHeaders::default(),
            request_body: true,
            ..Needs::default()
        };
        let grants = Grants {
            hooks: HookSet::ON_REQUEST,
            request: HeaderAccess {
                read: set(&["authorization"]),
                write: set(&["x-*"]),
            },
            ..Grants::baseline()
        };
        assert_eq!(
            grants.missing(&needs),
            [
                "hooks: on-response",
                "request_headers.read: x-tenant-*",
                "request_body"
            ]
        );
        let declared = Grants::declared(&needs).unwrap();
        assert!(declared.missing(&needs).is_empty());
        assert!(Grants::contract_0_1().missing(&needs) == ["request_body"]);
    }

    #[test]
    fn the_body_hook_and_the_response_body_are_declared_together() {
        let mut needs = Needs {
            hooks: HookSet::ON_RESPONSE_BODY,
            ..Needs::default()
        };
        assert!(needs.check().is_err());
        needs.response_body = true;
        assert!(needs.check().is_ok());
        needs.request_headers.read.push("Bad Name".into());
        assert!(needs.check().is_err());
    }
}
