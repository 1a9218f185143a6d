//! `canary`: sends the requests that carry a header, and a share of clients that stays the same
//! for each client, to the upstream's nodes with a tag; the others optionally to the nodes with
//! another tag.

use gatehouse_plugin_sdk::{
    config_header_name, export_plugin, parse_config, Action, Fallback, Hooks, Needs, Plugin,
    Request,
};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Tag of the canary nodes.
    tag: String,
    /// Share of clients sent to the canary, 0 to 100 (two decimals at most count).
    #[serde(default)]
    percent: f64,
    /// What keeps a client on one side: `client-addr` or `header:NAME`.
    #[serde(default = "client_addr")]
    by: String,
    /// A request with this header goes to the canary (whatever the share)...
    #[serde(default)]
    header: Option<String>,
    /// ...when its value is one of these (empty: any value).
    #[serde(default)]
    values: Vec<String>,
    /// Tag of the nodes that serve the other requests (none: they may use every node).
    #[serde(default)]
    stable_tag: Option<String>,
    /// When no node with the chosen tag can take a request: `any-node` or `fail` (503).
    #[serde(default = "any_node")]
    fallback: String,
}

fn client_addr() -> String {
    "client-addr".to_string()
}

fn any_node() -> String {
    "any-node".to_string()
}

/// Buckets clients are hashed into: a share is counted in hundredths of a percent.
const BUCKETS: u64 = 10_000;

/// What keeps a client on one side of the split.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    ClientAddr,
    Header(String),
}

/// Splits traffic between canary and stable nodes.
#[derive(Debug)]
pub struct Canary {
    tag: String,
    /// Clients whose bucket is below this go to the canary.
    share: u64,
    key: Key,
    header: Option<String>,
    values: Vec<String>,
    stable_tag: Option<String>,
    fallback: Fallback,
}

fn check_tag(key: &str, tag: &str) -> Result<(), String> {
    let good = (1..=32).contains(&tag.len())
        && tag.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if good {
        Ok(())
    } else {
        Err(format!(
            "`{key}`: {tag:?} is not a node tag (1 to 32 of a-z 0-9 - _, as in the upstream's `tags`)"
        ))
    }
}

/// FNV-1a, then a final mix so that near keys (consecutive addresses) spread over the buckets.
fn bucket(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h % BUCKETS
}

impl Canary {
    /// Whether this request goes to the canary.
    fn is_canary(&self, req: &Request) -> bool {
        if let Some(header) = &self.header {
            if let Some(value) = req.header(header) {
                if self.values.is_empty() || self.values.contains(&value) {
                    return true;
                }
            }
        }
        if self.share == 0 {
            return false;
        }
        let key = match &self.key {
            Key::ClientAddr => Some(req.client_addr()),
            Key::Header(name) => req.header(name),
        };
        key.is_some_and(|k| bucket(k.as_bytes()) < self.share)
    }
}

impl Plugin for Canary {
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn needs(&self) -> Needs {
        let mut needs = Needs::new(Self::HOOKS).node_steering();
        if let Some(header) = &self.header {
            needs = needs.read_request_header(header.clone());
        }
        if let Key::Header(name) = &self.key {
            needs = needs.read_request_header(name.clone());
        }
        needs
    }

    fn configure(config: &str) -> Result<Self, String> {
        let c: Config = parse_config(config)?;
        check_tag("tag", &c.tag)?;
        if let Some(stable) = &c.stable_tag {
            check_tag("stable_tag", stable)?;
            if *stable == c.tag {
                return Err("`stable_tag` must differ from `tag`".to_string());
            }
        }
        if !(0.0..=100.0).contains(&c.percent) {
            return Err(format!("`percent`: {} is out of range 0 to 100", c.percent));
        }
        let key = match c.by.as_str() {
            "client-addr" => Key::ClientAddr,
            other => match other.strip_prefix("header:") {
                Some(name) => Key::Header(config_header_name("by", name)?),
                None => {
                    return Err(format!(
                        "`by`: {other:?} is not a client key; use client-addr or header:NAME"
                    ))
                }
            },
        };
        let header = c
            .header
            .as_deref()
            .map(|h| config_header_name("header", h))
            .transpose()?;
        if header.is_none() && !c.values.is_empty() {
            return Err("`values` needs `header`".to_string());
        }
        if header.is_none() && c.percent == 0.0 {
            return Err(
                "no request would go to the canary: set `percent` or `header` (or both)"
                    .to_string(),
            );
        }
        let fallback = match c.fallback.as_str() {
            "any-node" => Fallback::AnyNode,
            "fail" => Fallback::Fail,
            other => {
                return Err(format!(
                    "`fallback`: {other:?} is not a fallback; use any-node or fail"
                ))
            }
        };
        Ok(Canary {
            tag: c.tag,
            share: (c.percent * 100.0).round() as u64,
            key,
            header,
            values: c.values,
            stable_tag: c.stable_tag,
            fallback,
        })
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        if self.is_canary(req) {
            req.steer_to_tag(&self.tag, self.fallback)?;
        } else if let Some(stable) = &self.stable_tag {
            req.steer_to_tag(stable, self.fallback)?;
        }
        Ok(Action::Proceed)
    }
}

export_plugin!(Canary);

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_plugin_sdk::Steer;

    fn steered(plugin: &Canary, req: Request) -> Option<String> {
        plugin.on_request(&req).unwrap();
        req.steered().map(|(to, _)| match to {
            Steer::Tag(tag) => tag,
            Steer::Node(node) => panic!("steered to node {node}"),
        })
    }

    #[test]
    fn the_header_sends_a_request_to_the_canary() {
        let plugin = Canary::configure(
            r#"{"tag": "canary", "header": "X-Canary", "values": ["1", "yes"], "stable_tag": "stable"}"#,
        )
        .unwrap();
        let req = |v: &str| Request::new("GET", "/").with_header("x-canary", v);
        assert_eq!(steered(&plugin, req("1")).as_deref(), Some("canary"));
        assert_eq!(steered(&plugin, req("yes")).as_deref(), Some("canary"));
        assert_eq!(steered(&plugin, req("0")).as_deref(), Some("stable"));
        assert_eq!(
            steered(&plugin, Request::new("GET", "/")).as_deref(),
            Some("stable")
        );
        assert_eq!(
            plugin.needs(),
            Needs::new(Hooks::ON_REQUEST)
                .node_steering()
                .read_request_header("x-canary")
        );
    }

    #[test]
    fn a_share_of_clients_goes_to_the_canary_and_each_client_stays_on_its_side() {
        let plugin = Canary::configure(r#"{"tag": "canary", "percent": 20}"#).unwrap();
        let mut canary = 0;
        for i in 0..10_000u32 {
            let addr = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            let first = steered(&plugin, Request::new("GET", "/").with_client_addr(&addr));
            for _ in 0..3 {
                let again = steered(&plugin, Request::new("GET", "/").with_client_addr(&addr));
                assert_eq!(again, first, "{addr} stays on its side");
            }
            canary += usize::from(first.is_some());
        }
        // 20% of 10,000 clients, within a few standard deviations (40)
        assert!((1_850..=2_150).contains(&canary), "{canary}");
    }

    #[test]
    fn a_header_can_key_the_share() {
        let plugin =
            Canary::configure(r#"{"tag": "canary", "percent": 50, "by": "header:x-user"}"#)
                .unwrap();
        let sides: Vec<bool> = (0..200)
            .map(|u| {
                let req = Request::new("GET", "/").with_header("x-user", &format!("user-{u}"));
                steered(&plugin, req).is_some()
            })
            .collect();
        assert!(sides.iter().any(|c| *c) && sides.iter().any(|c| !*c));
        // without the header a request is not in the share
        assert_eq!(steered(&plugin, Request::new("GET", "/")), None);
    }

    #[test]
    fn zero_and_a_hundred_percent_are_exact() {
        let all = Canary::configure(r#"{"tag": "canary", "percent": 100}"#).unwrap();
        let none =
            Canary::configure(r#"{"tag": "canary", "percent": 0, "header": "x-c"}"#).unwrap();
        for i in 0..1000 {
            let addr = format!("192.0.2.{}", i % 256);
            let req = || Request::new("GET", "/").with_client_addr(&addr);
            assert!(steered(&all, req()).is_some());
            assert!(steered(&none, req()).is_none());
        }
    }

    #[test]
    fn fallback_is_passed_on() {
        let plugin =
            Canary::configure(r#"{"tag": "canary", "percent": 100, "fallback": "fail"}"#).unwrap();
        let req = Request::new("GET", "/");
        plugin.on_request(&req).unwrap();
        assert_eq!(
            req.steered(),
            Some((Steer::Tag("canary".into()), Fallback::Fail))
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        for (config, error) in [
            (r#"{"percent": 5}"#, "missing field `tag`"),
            (
                r#"{"tag": "Canary", "percent": 5}"#,
                "`tag`: \"Canary\" is not a node tag",
            ),
            (
                r#"{"tag": "c", "percent": 101}"#,
                "`percent`: 101 is out of range 0 to 100",
            ),
            (
                r#"{"tag": "c", "percent": -1}"#,
                "`percent`: -1 is out of range",
            ),
            (r#"{"tag": "c"}"#, "no request would go to the canary"),
            (
                r#"{"tag": "c", "percent": 5, "by": "cookie"}"#,
                "`by`: \"cookie\" is not a client key",
            ),
            (
                r#"{"tag": "c", "percent": 5, "by": "header:bad name"}"#,
                "`by`: \"bad name\" is not a header name",
            ),
            (
                r#"{"tag": "c", "values": ["1"], "percent": 5}"#,
                "`values` needs `header`",
            ),
            (
                r#"{"tag": "c", "percent": 5, "stable_tag": "c"}"#,
                "`stable_tag` must differ",
            ),
            (
                r#"{"tag": "c", "percent": 5, "fallback": "retry"}"#,
                "`fallback`: \"retry\" is not a fallback",
            ),
        ] {
            let err = Canary::configure(config).unwrap_err();
            assert!(err.contains(error), "{config}: {err}");
        }
    }
}
