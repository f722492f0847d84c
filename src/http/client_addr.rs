//! The client address of a request: the socket's peer, or, when the peer
//! is a trusted proxy (`--trusted-proxy`), the address its forwarding
//! headers name. Per-address limits key on it.
//!
//! The headers are believed only as far as the chain of trusted proxies
//! goes: walking the hops from the right (the one nearest this server),
//! each trusted proxy vouches for the hop before it, and the first hop
//! that is not a trusted proxy is the client. Anything left of it was
//! written by the client and may be forged. `Forwarded: for=` is read when
//! present, else `X-Forwarded-For`. A hop that cannot be read (`unknown`,
//! an obfuscated name, garbage) ends the walk at the last trusted proxy.

use std::net::IpAddr;
use std::str::FromStr;

use hyper::header::{HeaderMap, HeaderName, FORWARDED};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A network: an address and how many leading bits of it must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => same_prefix(
                network.to_bits().into(),
                ip.to_bits().into(),
                self.prefix,
                32,
            ),
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                same_prefix(network.to_bits(), ip.to_bits(), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn same_prefix(network: u128, ip: u128, prefix: u8, width: u8) -> bool {
    let ignored = u32::from(width - prefix);
    network.checked_shr(ignored).unwrap_or(0) == ip.checked_shr(ignored).unwrap_or(0)
}

/// `10.0.0.0/8`, `fd00::/8`, or a single address (`192.0.2.7`, `::1`).
impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let invalid = || format!("`{text}` is not an address or CIDR like 10.0.0.0/8");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = address
            .parse::<IpAddr>()
            .map_err(|_| invalid())?
            .to_canonical();
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| invalid())?,
            None => width,
        };
        if prefix > width {
            return Err(invalid());
        }
        Ok(Cidr { network, prefix })
    }
}

/// The client address of a request that came from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|cidr| cidr.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops = if headers.contains_key(FORWARDED) {
        forwarded_for(headers)
    } else {
        x_forwarded_for(headers)
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip) => client = ip,
            Some(ip) => return ip,
            None => return client,
        }
    }
    // Every hop was a trusted proxy: the left-most is as near the client
    // as anyone can tell.
    client
}

/// The hops of every `X-Forwarded-For` header, in order; None for one that
/// is not an address.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        match value.to_str() {
            Ok(value) => hops.extend(value.split(',').map(parse_hop)),
            Err(_) => hops.push(None),
        }
    }
    hops
}

/// The `for=` of each element of every `Forwarded` header (RFC 7239), in
/// order; None for an element without a readable one.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(FORWARDED) {
        let Ok(value) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim().eq_ignore_ascii_case("for").then_some(value)
            });
            hops.push(node.and_then(parse_hop));
        }
    }
    hops
}

/// One hop: `192.0.2.7`, `192.0.2.7:4711`, `"[2001:db8::1]:4711"`,
/// `2001:db8::1`. None for `unknown`, `_hidden` and anything else.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(text);
    let address = if let Some(bracketed) = text.strip_prefix('[') {
        bracketed.split_once(']')?.0
    } else if text.matches(':').count() == 1 {
        // IPv4 with a port (a bare IPv6 address has several colons).
        text.split_once(':')?.0
    } else {
        text
    };
    address.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|cidr| cidr.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn cidrs_match_ipv4_and_ipv6() {
        let private: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(private.contains(ip("10.1.2.3")));
        assert!(!private.contains(ip("11.0.0.1")));
        assert!(private.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped");
        assert!(!private.contains(ip("fd00::1")));
        let single: Cidr = "192.0.2.7".parse().unwrap();
        assert!(single.contains(ip("192.0.2.7")));
        assert!(!single.contains(ip("192.0.2.8")));
        let ula: Cidr = "fd00::/8".parse().unwrap();
        assert!(ula.contains(ip("fd12:3456::1")));
        assert!(!ula.contains(ip("fe80::1")));
        let everything: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains(ip("203.0.113.9")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "host",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let forged = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &forged, &[]), ip("127.0.0.1"));
    }

    #[test]
    fn a_spoofed_header_from_an_untrusted_peer_is_ignored() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let forged = headers(&[("x-forwarded-for", "10.0.0.5, 1.2.3.4")]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &forged, &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        // The client forged the first entry; the proxy appended the real one.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &chain, &trusted),
            ip("198.51.100.4")
        );
        // Through two proxies, the second appending the first.
        let two = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &two, &trusted),
            ip("198.51.100.4")
        );
        // Split over several header lines, in order.
        let lines = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.4, 10.0.0.2"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &lines, &trusted),
            ip("198.51.100.4")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        // Every hop trusted: the left-most.
        let internal = headers(&[("x-forwarded-for", "10.0.0.7, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &internal, &trusted),
            ip("10.0.0.7")
        );
    }

    #[test]
    fn an_unreadable_hop_stops_at_the_last_trusted_proxy() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let garbage = headers(&[("x-forwarded-for", "6.6.6.6, nonsense, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &garbage, &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn forwarded_for_with_quotes_ports_and_ipv6() {
        let trusted = cidrs(&["10.0.0.0/8", "fd00::/8"]);
        let v6 = headers(&[(
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8::17]:4711";proto=https, for=10.0.0.2"#,
        )]);
        assert_eq!(client_ip(ip("fd00::1"), &v6, &trusted), ip("2001:db8::17"));
        let v4 = headers(&[(
            "forwarded",
            r#"proto=http;For="198.51.100.4:80";by=10.0.0.1"#,
        )]);
        assert_eq!(client_ip(ip("10.0.0.1"), &v4, &trusted), ip("198.51.100.4"));
        let hidden = headers(&[("forwarded", "for=_hidden, for=10.0.0.3")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &hidden, &trusted), ip("10.0.0.3"));
        // Forwarded wins over X-Forwarded-For when both are sent.
        let both = headers(&[
            ("forwarded", "for=198.51.100.4"),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &both, &trusted),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn an_ipv4_mapped_peer_counts_as_ipv4() {
        let trusted = cidrs(&["127.0.0.1"]);
        let chain = headers(&[("x-forwarded-for", "198.51.100.4")]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &chain, &trusted),
            ip("198.51.100.4")
        );
        assert_eq!(
            client_ip(ip("::ffff:192.0.2.1"), &HeaderMap::new(), &[]),
            ip("192.0.2.1")
        );
    }
}
