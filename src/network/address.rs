//! Which addresses are internal: the ranges the network guard refuses to connect to, found
//! however they are written — plain, or an IPv4 address carried inside an IPv6 one (mapped,
//! compatible, translated, NAT64, 6to4, Teredo).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A range the guard refuses unless a policy or the operator allows it by CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InternalRange {
    /// `0.0.0.0/8` ("this network"), `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT (RFC 6598); cloud metadata lives here too
    /// (`100.100.100.200`).
    SharedAddressSpace,
    /// `169.254.0.0/16` (cloud metadata at `169.254.169.254`), `fe80::/10`.
    LinkLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `fc00::/7` (RFC 4193; cloud metadata at `fd00:ec2::254`), and the deprecated
    /// site-local `fec0::/10`.
    UniqueLocal,
    /// Not routed on the internet: `192.0.0.0/24` (IETF protocol assignments, a cloud
    /// metadata address among them), `198.18.0.0/15` (benchmarking), `240.0.0.0/4`,
    /// `100::/64` (discard), and IPv4-compatible or -translated IPv6 (`::a.b.c.d`), which
    /// nothing routes any more.
    Reserved,
}

impl InternalRange {
    pub fn as_str(self) -> &'static str {
        match self {
            InternalRange::Unspecified => "unspecified",
            InternalRange::Loopback => "loopback",
            InternalRange::Private => "private",
            InternalRange::SharedAddressSpace => "shared_address_space",
            InternalRange::LinkLocal => "link_local",
            InternalRange::Multicast => "multicast",
            InternalRange::Broadcast => "broadcast",
            InternalRange::UniqueLocal => "unique_local",
            InternalRange::Reserved => "reserved",
        }
    }
}

/// How an IPv4 address was carried inside an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`
    Mapped,
    /// `::a.b.c.d` (deprecated)
    Compatible,
    /// `::ffff:0:a.b.c.d` (SIIT)
    Translated,
    /// `64:ff9b::a.b.c.d` and the local-use `64:ff9b:1::/48`
    Nat64,
    /// `2002:AABB:CCDD::/48`
    SixToFour,
    /// `2001:0::/32`, server and (inverted) client address
    Teredo,
}

impl Embedding {
    pub fn as_str(self) -> &'static str {
        match self {
            Embedding::Mapped => "ipv4_mapped",
            Embedding::Compatible => "ipv4_compatible",
            Embedding::Translated => "ipv4_translated",
            Embedding::Nat64 => "nat64",
            Embedding::SixToFour => "6to4",
            Embedding::Teredo => "teredo",
        }
    }
}

/// Why an address is internal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Internal {
    pub range: InternalRange,
    /// Set when the internal address is an IPv4 one carried inside this IPv6 address.
    pub embedded: Option<(Embedding, Ipv4Addr)>,
}

impl std::fmt::Display for Internal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.embedded {
            None => f.write_str(self.range.as_str()),
            Some((how, _)) => write!(f, "{} ({})", self.range.as_str(), how.as_str()),
        }
    }
}

/// The range `ip` is in, when it is internal; `None` for an address on the internet.
pub fn classify(ip: IpAddr) -> Option<Internal> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(|range| Internal {
            range,
            embedded: None,
        }),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<InternalRange> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => InternalRange::Unspecified,
        (127, _, _) => InternalRange::Loopback,
        (10, _, _) | (192, 168, _) => InternalRange::Private,
        (172, 16..=31, _) => InternalRange::Private,
        (100, 64..=127, _) => InternalRange::SharedAddressSpace,
        (169, 254, _) => InternalRange::LinkLocal,
        (224..=239, _, _) => InternalRange::Multicast,
        _ if ip == Ipv4Addr::BROADCAST => InternalRange::Broadcast,
        (240..=255, _, _) | (192, 0, 0) | (198, 18..=19, _) => InternalRange::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Internal> {
    let bits = u128::from(ip);
    let seg = ip.segments();
    let direct = |range| {
        Some(Internal {
            range,
            embedded: None,
        })
    };
    if ip.is_unspecified() {
        return direct(InternalRange::Unspecified);
    }
    if ip.is_loopback() {
        return direct(InternalRange::Loopback);
    }
    let low32 = Ipv4Addr::from(bits as u32);
    // IPv4 inside IPv6: the IPv4 address decides. Mapped and NAT64 addresses of a public
    // IPv4 address reach that address and are fine; the deprecated forms are never routed.
    let embedded = match seg {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some((Embedding::Mapped, low32, None)),
        [0, 0, 0, 0, 0, 0, _, _] => {
            Some((Embedding::Compatible, low32, Some(InternalRange::Reserved)))
        }
        [0, 0, 0, 0, 0xffff, 0, _, _] => {
            Some((Embedding::Translated, low32, Some(InternalRange::Reserved)))
        }
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, _, _, _, _, _] => {
            Some((Embedding::Nat64, low32, None))
        }
        [0x2002, hi, lo, _, _, _, _, _] => Some((
            Embedding::SixToFour,
            Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)),
            None,
        )),
        [0x2001, 0, hi, lo, _, _, _, _] => {
            // The client address is stored inverted; the server is plain.
            let server = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            let client = Ipv4Addr::from(!(bits as u32));
            let worst = [client, server]
                .into_iter()
                .find(|v4| classify_v4(*v4).is_some())
                .unwrap_or(client);
            Some((Embedding::Teredo, worst, None))
        }
        _ => None,
    };
    if let Some((how, v4, otherwise)) = embedded {
        return classify_v4(v4).or(otherwise).map(|range| Internal {
            range,
            embedded: Some((how, v4)),
        });
    }
    match seg[0] {
        0xfc00..=0xfdff | 0xfec0..=0xfeff => direct(InternalRange::UniqueLocal),
        0xfe80..=0xfebf => direct(InternalRange::LinkLocal),
        0xff00..=0xffff => direct(InternalRange::Multicast),
        0x0100 if seg[1..4] == [0, 0, 0] => direct(InternalRange::Reserved),
        _ => None,
    }
}

/// The address a connection to `ip` really goes to: an IPv4-mapped IPv6 address is the
/// IPv4 address it carries. Envoy is told this form.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Reads a host written the way `inet_aton` reads it — one to four parts, each decimal,
/// octal (`0` prefix) or hex (`0x`), the last filling the remaining bytes: `2130706433`,
/// `0x7f.1`, `0177.0.0.1`, `127.1`. Clients and upstreams read such hosts as IPv4
/// addresses, so the guard does too, and never asks DNS about them.
pub fn legacy_ipv4(host: &str) -> Option<Ipv4Addr> {
    if !host.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    crate::request::parse_ipv4_forms(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_range_and_encoded_form_is_classified() {
        use InternalRange::*;
        let table: &[(&str, Option<InternalRange>, Option<Embedding>)] = &[
            ("0.0.0.0", Some(Unspecified), None),
            ("0.1.2.3", Some(Unspecified), None),
            ("127.0.0.1", Some(Loopback), None),
            ("127.255.255.254", Some(Loopback), None),
            ("10.0.0.1", Some(Private), None),
            ("172.16.0.1", Some(Private), None),
            ("172.31.255.255", Some(Private), None),
            ("172.32.0.1", None, None),
            ("172.15.255.255", None, None),
            ("192.168.1.1", Some(Private), None),
            ("100.64.0.1", Some(SharedAddressSpace), None),
            ("100.100.100.200", Some(SharedAddressSpace), None),
            ("100.127.255.255", Some(SharedAddressSpace), None),
            ("100.128.0.1", None, None),
            ("169.254.169.254", Some(LinkLocal), None),
            ("169.254.0.1", Some(LinkLocal), None),
            ("224.0.0.1", Some(Multicast), None),
            ("239.255.255.250", Some(Multicast), None),
            ("255.255.255.255", Some(Broadcast), None),
            ("240.0.0.1", Some(Reserved), None),
            ("192.0.0.192", Some(Reserved), None),
            ("198.18.0.1", Some(Reserved), None),
            ("8.8.8.8", None, None),
            ("1.1.1.1", None, None),
            ("203.0.113.7", None, None),
            ("::", Some(Unspecified), None),
            ("::1", Some(Loopback), None),
            ("fc00::1", Some(UniqueLocal), None),
            ("fd00:ec2::254", Some(UniqueLocal), None),
            ("fec0::1", Some(UniqueLocal), None),
            ("fe80::1", Some(LinkLocal), None),
            ("febf::1", Some(LinkLocal), None),
            ("ff02::1", Some(Multicast), None),
            ("100::1", Some(Reserved), None),
            ("2606:4700::1111", None, None),
            ("2001:db8::1", None, None),
            ("::ffff:127.0.0.1", Some(Loopback), Some(Embedding::Mapped)),
            ("::ffff:a9fe:a9fe", Some(LinkLocal), Some(Embedding::Mapped)),
            ("::ffff:8.8.8.8", None, None),
            ("::127.0.0.1", Some(Loopback), Some(Embedding::Compatible)),
            ("::8.8.8.8", Some(Reserved), Some(Embedding::Compatible)),
            (
                "::ffff:0:10.0.0.1",
                Some(Private),
                Some(Embedding::Translated),
            ),
            ("64:ff9b::127.0.0.1", Some(Loopback), Some(Embedding::Nat64)),
            (
                "64:ff9b::169.254.169.254",
                Some(LinkLocal),
                Some(Embedding::Nat64),
            ),
            ("64:ff9b:1::10.1.2.3", Some(Private), Some(Embedding::Nat64)),
            ("64:ff9b::8.8.8.8", None, None),
            ("2002:7f00:1::1", Some(Loopback), Some(Embedding::SixToFour)),
            (
                "2002:c0a8:101::1",
                Some(Private),
                Some(Embedding::SixToFour),
            ),
            ("2002:808:808::1", None, None),
            // Teredo: server 65.54.227.120, client 127.0.0.1 stored inverted.
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                Some(Loopback),
                Some(Embedding::Teredo),
            ),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None, None),
        ];
        for (text, range, how) in table {
            let ip: IpAddr = text.parse().unwrap();
            let got = classify(ip);
            assert_eq!(got.map(|i| i.range), *range, "{text}");
            assert_eq!(got.and_then(|i| i.embedded).map(|e| e.0), *how, "{text}");
        }
    }

    #[test]
    fn legacy_ipv4_forms_read_as_inet_aton_does() {
        for (text, want) in [
            ("2130706433", Some("127.0.0.1")),
            ("0x7f000001", Some("127.0.0.1")),
            ("0x7f.1", Some("127.0.0.1")),
            ("0177.0.0.1", Some("127.0.0.1")),
            ("127.1", Some("127.0.0.1")),
            ("169.254.43518", Some("169.254.169.254")),
            ("10.0.0.1", Some("10.0.0.1")),
            ("0", Some("0.0.0.0")),
            ("4294967296", None),
            ("256.0.0.1", None),
            ("1.2.3.4.5", None),
            ("08.0.0.1", None),
            ("1e100.net", None),
            ("example.com", None),
            ("", None),
        ] {
            assert_eq!(
                legacy_ipv4(text),
                want.map(|w| w.parse::<Ipv4Addr>().unwrap()),
                "{text}"
            );
        }
    }

    fn blocked_v4() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            (0u32..1 << 24).prop_map(Ipv4Addr::from),
            (0u32..1 << 24).prop_map(|n| Ipv4Addr::from((127 << 24) | n)),
            (0u32..1 << 24).prop_map(|n| Ipv4Addr::from((10 << 24) | n)),
            (0u32..1 << 20).prop_map(|n| Ipv4Addr::from(0xac10_0000 | n)),
            (0u32..1 << 16).prop_map(|n| Ipv4Addr::from(0xc0a8_0000 | n)),
            (0u32..1 << 22).prop_map(|n| Ipv4Addr::from(0x6440_0000 | n)),
            (0u32..1 << 16).prop_map(|n| Ipv4Addr::from(0xa9fe_0000 | n)),
            (0u32..1 << 28).prop_map(|n| Ipv4Addr::from(0xe000_0000 | n)),
            (0u32..1 << 28).prop_map(|n| Ipv4Addr::from(0xf000_0000 | n)),
        ]
    }

    proptest! {
        #[test]
        fn a_blocked_ipv4_address_is_blocked_in_every_ipv6_form(v4 in blocked_v4(), low in any::<u64>()) {
            let range = classify(IpAddr::V4(v4)).expect("blocked").range;
            let n = u128::from(u32::from(v4));
            let forms = [
                (0xffffu128 << 32) | n,
                n,
                (0xffffu128 << 48) | n,
                (0x0064_ff9bu128 << 96) | n,
                (0x0064_ff9b_0001u128 << 80) | (u128::from(low) & 0xffff_ffff_0000_0000) | n,
                (0x2002u128 << 112) | (n << 80) | u128::from(low),
            ];
            for form in forms {
                let ip = Ipv6Addr::from(form);
                let got = classify(IpAddr::V6(ip));
                prop_assert_eq!(got.map(|i| i.range), Some(range), "{}", ip);
            }
            let teredo = Ipv6Addr::from((0x2001_0000u128 << 96) | (0x0808_0808u128 << 64)
                | (u128::from(low as u32) << 32) | u128::from(!u32::from(v4)));
            prop_assert_eq!(classify(IpAddr::V6(teredo)).map(|i| i.range), Some(range), "{}", teredo);
        }

        #[test]
        fn canonical_form_of_a_mapped_address_is_the_ipv4_address(v4 in any::<u32>()) {
            let v4 = Ipv4Addr::from(v4);
            prop_assert_eq!(canonical(IpAddr::V6(v4.to_ipv6_mapped())), IpAddr::V4(v4));
        }
    }
}
