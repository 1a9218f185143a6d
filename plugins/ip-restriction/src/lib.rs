//! `ip-restriction`: answers 403 to clients outside the `allow` ranges or inside the `deny`
//! ranges (deny wins).

use std::net::{IpAddr, SocketAddr};

use gatehouse_plugin_sdk::{
    export_plugin, log, parse_config, Action, Hooks, Needs, Plugin, Reply, Request,
};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Only these ranges may pass (empty: every address not denied).
    #[serde(default)]
    allow: Vec<String>,
    /// These ranges are refused, even when also allowed.
    #[serde(default)]
    deny: Vec<String>,
}

/// An address range: an address and a prefix length (`10.0.0.0/8`, `2001:db8::/32`); a bare
/// address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(format!(
                        "{text:?}: the prefix length must be a number from 0 to {max}"
                    ))
                }
            },
        };
        let cidr = Cidr {
            network: canonical(network),
            prefix,
        };
        if cidr.masked() != cidr.network {
            return Err(format!(
                "{text:?} has bits set after the prefix; did you mean {}/{prefix}?",
                cidr.masked()
            ));
        }
        Ok(cidr)
    }

    /// The network address with the bits after the prefix cleared.
    fn masked(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask32(self.prefix)).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask128(self.prefix)).into()),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) count as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The client's address as the gateway gives it: `ip`, or `ip:port` / `[ip]:port`.
fn parse_client(addr: &str) -> Option<IpAddr> {
    addr.parse::<IpAddr>()
        .or_else(|_| addr.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

fn parse_list(key: &str, list: &[String]) -> Result<Vec<Cidr>, String> {
    list.iter()
        .enumerate()
        .map(|(i, text)| Cidr::parse(text).map_err(|e| format!("`{key}[{i}]`: {e}")))
        .collect()
}

/// Filters clients by address.
#[derive(Debug)]
pub struct IpRestriction {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl IpRestriction {
    fn is_allowed(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }
}

impl Plugin for IpRestriction {
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    /// The client address only: no header.
    fn needs(&self) -> Needs {
        Needs::new(Self::HOOKS)
    }

    fn configure(config: &str) -> Result<Self, String> {
        let Config { allow, deny } = parse_config(config)?;
        if allow.is_empty() && deny.is_empty() {
            return Err("set `allow` or `deny` (or both) to a list of CIDR ranges".to_string());
        }
        Ok(IpRestriction {
            allow: parse_list("allow", &allow)?,
            deny: parse_list("deny", &deny)?,
        })
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        let addr = req.client_addr();
        let allowed = match parse_client(&addr) {
            Some(ip) => self.is_allowed(ip),
            None => {
                log::warn(&format!(
                    "refusing a client with an unreadable address {addr:?}"
                ));
                false
            }
        };
        if allowed {
            Ok(Action::Proceed)
        } else {
            Ok(Reply::error(403, "forbidden", "access from this address is not allowed").into())
        }
    }
}

export_plugin!(IpRestriction);

#[cfg(test)]
mod tests {
    use super::*;

    fn status(plugin: &IpRestriction, client: &str) -> u16 {
        match plugin
            .on_request(&Request::new("GET", "/").with_client_addr(client))
            .unwrap()
        {
            Action::Proceed => 200,
            Action::Respond(reply) => reply.status,
        }
    }

    #[test]
    fn allow_list() {
        let plugin = IpRestriction::configure(
            r#"{"allow": ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]}"#,
        )
        .unwrap();
        assert_eq!(status(&plugin, "10.1.2.3"), 200);
        assert_eq!(status(&plugin, "10.1.2.3:5555"), 200);
        assert_eq!(status(&plugin, "192.168.1.7"), 200);
        assert_eq!(status(&plugin, "192.168.1.8"), 403);
        assert_eq!(status(&plugin, "11.0.0.1"), 403);
        assert_eq!(status(&plugin, "2001:db8:1::5"), 200);
        assert_eq!(status(&plugin, "[2001:db8::1]:443"), 200);
        assert_eq!(status(&plugin, "2001:db9::1"), 403);
        assert_eq!(status(&plugin, "::ffff:10.9.9.9"), 200);
    }

    #[test]
    fn deny_wins() {
        let plugin =
            IpRestriction::configure(r#"{"allow": ["10.0.0.0/8"], "deny": ["10.66.0.0/16"]}"#)
                .unwrap();
        assert_eq!(status(&plugin, "10.1.0.1"), 200);
        assert_eq!(status(&plugin, "10.66.3.4"), 403);
    }

    #[test]
    fn deny_only() {
        let plugin = IpRestriction::configure(r#"{"deny": ["203.0.113.0/24", "::1"]}"#).unwrap();
        assert_eq!(status(&plugin, "203.0.113.9"), 403);
        assert_eq!(status(&plugin, "::1"), 403);
        assert_eq!(status(&plugin, "198.51.100.1"), 200);
        assert_eq!(status(&plugin, "::2"), 200);
    }

    #[test]
    fn zero_prefix_matches_its_family_only() {
        let plugin = IpRestriction::configure(r#"{"deny": ["0.0.0.0/0"]}"#).unwrap();
        assert_eq!(status(&plugin, "1.2.3.4"), 403);
        assert_eq!(status(&plugin, "2001:db8::1"), 200);
    }

    #[test]
    fn refusal_is_a_json_403() {
        let plugin = IpRestriction::configure(r#"{"allow": ["10.0.0.0/8"]}"#).unwrap();
        let Action::Respond(reply) = plugin
            .on_request(&Request::new("GET", "/").with_client_addr("8.8.8.8"))
            .unwrap()
        else {
            panic!("expected a reply")
        };
        assert_eq!(reply.header_value("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["status"], 403);
        assert_eq!(body["error"], "forbidden");
    }

    #[test]
    fn unreadable_client_address_is_refused() {
        let plugin = IpRestriction::configure(r#"{"deny": ["10.0.0.0/8"]}"#).unwrap();
        assert_eq!(status(&plugin, "unix:/tmp/socket"), 403);
    }

    #[test]
    fn config_errors() {
        let err = |config: &str| IpRestriction::configure(config).unwrap_err();
        assert!(err("{}").contains("set `allow` or `deny`"));
        assert!(err(r#"{"allow": [], "deny": []}"#).contains("set `allow` or `deny`"));
        assert!(err(r#"{"allow": ["10.0.0.0/8", "nope"]}"#)
            .starts_with("`allow[1]`: \"nope\" is not an IP"));
        assert!(err(r#"{"deny": ["10.0.0.0/33"]}"#).contains("from 0 to 32"));
        assert!(err(r#"{"deny": ["::/129"]}"#).contains("from 0 to 128"));
        assert!(err(r#"{"deny": ["10.1.2.3/8"]}"#).contains("did you mean 10.0.0.0/8?"));
        assert!(err(r#"{"allow": "10.0.0.0/8"}"#).contains("invalid type"));
    }
}
