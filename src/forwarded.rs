//! The client's address behind proxies: `X-Forwarded-For` is believed only when the peer is a
//! configured proxy (`server.trusted_proxies`), and then only up to the first address that is
//! not one, so a client cannot name itself by sending the header.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The peer, or, when the peer is a trusted proxy, the nearest address in `X-Forwarded-For`
/// (walking from the right) that is not a trusted proxy.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`.
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // A value that is not text ends the walk: nothing left of it can be believed.
    let hops: Vec<Option<&str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| match value.to_str() {
            Ok(text) => text.split(',').map(Some).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    for hop in hops.iter().rev() {
        let Some(ip) = hop.and_then(parse_hop) else {
            // Whatever the proxies did not write themselves cannot be believed.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// One entry: an address, possibly with a port (`1.2.3.4:5678`, `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::cases;
    use proptest::prelude::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                "x-forwarded-for",
                value.parse().expect("test value is a valid header"),
            );
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn the_header_counts_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let rows = [
            // (peer, X-Forwarded-For values, client)
            ("203.0.113.9", vec!["1.2.3.4"], "203.0.113.9"),
            ("10.0.0.2", vec!["1.2.3.4"], "1.2.3.4"),
            ("10.0.0.2", vec!["6.6.6.6, 1.2.3.4, 10.0.0.7"], "1.2.3.4"),
            ("10.0.0.2", vec!["6.6.6.6", "1.2.3.4"], "1.2.3.4"),
            ("10.0.0.2", vec!["garbage, 1.2.3.4"], "1.2.3.4"),
            ("10.0.0.2", vec!["1.2.3.4, garbage"], "10.0.0.2"),
            ("10.0.0.2", vec![], "10.0.0.2"),
            ("10.0.0.2", vec!["10.0.0.9"], "10.0.0.9"),
            ("10.0.0.2", vec!["2001:db8::1"], "2001:db8::1"),
            ("10.0.0.2", vec!["1.2.3.4:5678"], "1.2.3.4"),
            ("10.0.0.2", vec!["[2001:db8::1]:443"], "2001:db8::1"),
            ("::ffff:10.0.0.2", vec!["1.2.3.4"], "1.2.3.4"),
        ];
        for (peer, values, client) in rows {
            assert_eq!(
                client_addr(ip(peer), &headers(&values), &trusted),
                ip(client),
                "{peer} {values:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(cases(256))]

        /// Whatever a client sends, an untrusted peer is the client, and a trusted one yields
        /// an address without panicking.
        #[test]
        fn arbitrary_headers_never_fool_an_untrusted_peer(value in "[ -~]{0,80}") {
            let Ok(value) = http::HeaderValue::from_str(&value) else { return Ok(()); };
            let mut map = HeaderMap::new();
            map.insert("x-forwarded-for", value);
            let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().expect("net")];
            prop_assert_eq!(client_addr(ip("198.51.100.1"), &map, &trusted), ip("198.51.100.1"));
            let _ = client_addr(ip("127.0.0.1"), &map, &trusted);
        }
    }
}
