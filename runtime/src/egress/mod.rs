//! Outbound network for functions: deny by default, a per-function allow-list, one
//! enforcement point for both backends.
//!
//! An [`AllowList`] names the `host:port` pairs a function may reach. It is enforced by
//! newt's egress proxy ([`proxy::EgressProxy`]), which listens on a unix socket that a
//! container reaches through a bind mount (the container itself keeps network `none`),
//! and which the wasm backend's outgoing HTTP goes through too. The proxy resolves
//! names itself and connects to the address it checked, so a name that resolves to
//! this host, the LAN or a metadata service (DNS rebinding) is refused unless the list
//! names that address literally.

pub mod proxy;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub use proxy::{EgressProxy, EgressStats};

/// Most entries one function's allow-list may hold.
pub const MAX_ENTRIES: usize = 64;

/// How long resolving a name may take before the connection is refused.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to an allowed destination may take, per address.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the first of `addrs` (what [`AllowList::resolve`] checked) that answers
/// within `timeout`; the error names the last address tried and why it failed.
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        last = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => std::io::Error::new(e.kind(), format!("{addr}: {e}")),
            Err(_) => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{addr}: no answer in {timeout:?}"),
            ),
        };
    }
    Err(last)
}

/// The destinations one function may reach. Empty (the default): none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Entry>,
}

/// One `host:port` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    host: Host,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    /// An address, allowed whatever kind it is (the operator named it).
    Ip(IpAddr),
    /// A DNS name, lower case without a trailing dot; allowed only where it resolves to
    /// a public address.
    Name(String),
    /// `*.example.com`: any name under the suffix (stored with its leading dot), not
    /// the suffix itself.
    Suffix(String),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
            Host::Suffix(suffix) => write!(f, "*{suffix}:{}", self.port),
        }
    }
}

/// Why a destination was refused; the text is what the function sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The destination is not on the list.
    #[error("{0} is not in this function's allow_outbound list")]
    NotAllowed(String),
    /// The name is on the list but resolves only to addresses that are not public.
    #[error(
        "{0} resolves only to non-public addresses ({1}); name the address itself in \
         allow_outbound to reach it"
    )]
    NonPublic(String, String),
    /// The name could not be resolved.
    #[error("{0} could not be resolved: {1}")]
    Unresolved(String, String),
    /// The request named no usable destination.
    #[error("{0}")]
    BadTarget(String),
}

impl AllowList {
    /// Parses entries like `api.example.com:443`, `*.example.com:443`,
    /// `127.0.0.2:8080` or `[::1]:8080`. The port is required.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, String> {
        if entries.len() > MAX_ENTRIES {
            return Err(format!(
                "allow_outbound has {} entries; at most {MAX_ENTRIES} are allowed",
                entries.len()
            ));
        }
        let mut parsed = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.as_ref();
            let parsed_entry = parse_entry(entry)
                .map_err(|why| format!("allow_outbound entry {entry:?}: {why}"))?;
            if !parsed.contains(&parsed_entry) {
                parsed.push(parsed_entry);
            }
        }
        Ok(AllowList { entries: parsed })
    }

    /// True when nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in their canonical spelling (what the API shows and stores).
    pub fn entries(&self) -> Vec<String> {
        self.entries.iter().map(Entry::to_string).collect()
    }

    /// Checks `host:port` (as a client named it: a name, an address, or `[v6]`) and
    /// returns the addresses to connect to, resolving names here so the caller connects
    /// to exactly what was checked.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Denied> {
        let target = normalize_host(host).map_err(Denied::BadTarget)?;
        let shown = match &target {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            Host::Ip(ip) => format!("{ip}:{port}"),
            Host::Name(name) | Host::Suffix(name) => format!("{name}:{port}"),
        };
        match target {
            Host::Ip(ip) => {
                let listed = self
                    .entries
                    .iter()
                    .any(|e| e.port == port && e.host == Host::Ip(ip));
                if listed {
                    Ok(vec![SocketAddr::new(ip, port)])
                } else {
                    Err(Denied::NotAllowed(shown))
                }
            }
            Host::Name(name) | Host::Suffix(name) => {
                let listed = self.entries.iter().any(|e| {
                    e.port == port
                        && match &e.host {
                            Host::Name(n) => *n == name,
                            Host::Suffix(suffix) => name.ends_with(suffix.as_str()),
                            Host::Ip(_) => false,
                        }
                });
                if !listed {
                    return Err(Denied::NotAllowed(shown));
                }
                let resolved =
                    tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((&*name, port)))
                        .await
                        .map_err(|_| Denied::Unresolved(shown.clone(), "timed out".into()))?
                        .map_err(|e| Denied::Unresolved(shown.clone(), e.to_string()))?
                        .collect::<Vec<_>>();
                let (public, private): (Vec<_>, Vec<_>) =
                    resolved.into_iter().partition(|a| is_public(a.ip()));
                if public.is_empty() {
                    let addrs: Vec<String> = private.iter().map(|a| a.ip().to_string()).collect();
                    return Err(Denied::NonPublic(shown, addrs.join(", ")));
                }
                Ok(public)
            }
        }
    }
}

fn parse_entry(entry: &str) -> Result<Entry, String> {
    let entry = entry.trim();
    let (host, port) = entry
        .rsplit_once(':')
        .ok_or("give host:port (the port is required)")?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or("the port must be a number from 1 to 65535")?;
    let host = if let Some(suffix) = host.strip_prefix("*.") {
        match normalize_host(suffix)? {
            Host::Name(name) => Host::Suffix(format!(".{name}")),
            _ => return Err("a wildcard needs a DNS name after `*.`".into()),
        }
    } else {
        normalize_host(host)?
    };
    if host == Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        || host == Host::Ip(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    {
        return Err("the unspecified address cannot be reached".into());
    }
    Ok(Entry { host, port })
}

/// A host as a client or an entry spells it: an address (v6 in brackets or bare), or a
/// DNS name (letters, digits, `-`, `_` and dots; at most 253 bytes), lower-cased.
fn normalize_host(host: &str) -> Result<Host, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Host::Ip(canonical_ip(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!("{host:?} is neither an IP address nor a DNS name"));
    }
    Ok(Host::Name(name))
}

/// An IPv4-mapped IPv6 address is the IPv4 address it carries.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is an address of the public internet: not this host, the LAN, a
/// link-local or metadata address, shared (CGNAT) space, multicast or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0xdb8
                || first == 0x0064 && v6.segments()[1] == 0xff9b
                || (first == 0 && v6.to_ipv4_mapped().is_none()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_canonicalises_entries() {
        let list = AllowList::parse(&[
            "API.Example.com.:443",
            "127.0.0.2:8080",
            "[::1]:80",
            "*.example.org:443",
            "api.example.com:443",
        ])
        .unwrap();
        assert_eq!(
            list.entries(),
            [
                "api.example.com:443",
                "127.0.0.2:8080",
                "[::1]:80",
                "*.example.org:443"
            ]
        );
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:99999",
            "exa mple.com:80",
            "*.1.2.3.4:80",
            "0.0.0.0:80",
            ":80",
            "a/b:80",
        ] {
            assert!(AllowList::parse(&[bad]).is_err(), "{bad} was accepted");
        }
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("h{i}.com:1")).collect();
        assert!(AllowList::parse(&many).is_err());
    }

    #[tokio::test]
    async fn addresses_must_be_listed_literally() {
        let list = AllowList::parse(&["127.0.0.2:8080"]).unwrap();
        assert_eq!(
            list.resolve("127.0.0.2", 8080).await.unwrap(),
            ["127.0.0.2:8080".parse().unwrap()]
        );
        assert_eq!(
            list.resolve("[::ffff:127.0.0.2]", 8080).await.unwrap(),
            ["127.0.0.2:8080".parse().unwrap()]
        );
        assert!(matches!(
            list.resolve("127.0.0.2", 8081).await,
            Err(Denied::NotAllowed(_))
        ));
        assert!(matches!(
            list.resolve("127.0.0.3", 8080).await,
            Err(Denied::NotAllowed(_))
        ));
        assert!(
            AllowList::default()
                .resolve("127.0.0.2", 8080)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_listed_name_that_resolves_to_this_host_is_refused() {
        let list = AllowList::parse(&["localhost:8080"]).unwrap();
        let denied = list.resolve("localhost", 8080).await.unwrap_err();
        assert!(matches!(denied, Denied::NonPublic(..)), "{denied}");
        assert!(denied.to_string().contains("127.0.0.1"), "{denied}");
        assert!(matches!(
            list.resolve("LOCALHOST.", 8081).await,
            Err(Denied::NotAllowed(_))
        ));
    }

    #[tokio::test]
    async fn wildcards_match_names_below_the_suffix_only() {
        let list = AllowList::parse(&["*.localhost:80"]).unwrap();
        // Listed (so the refusal is about the address, not the name)...
        assert!(matches!(
            list.resolve("a.localhost", 80).await,
            Err(Denied::NonPublic(..) | Denied::Unresolved(..))
        ));
        // ...but the suffix itself and look-alikes are not.
        for name in ["localhost", "evillocalhost", "localhost.evil"] {
            assert!(
                matches!(list.resolve(name, 80).await, Err(Denied::NotAllowed(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn public_addresses() {
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }
}
