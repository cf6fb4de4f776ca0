//! The host a request is for, in the one form rules compare: what a resolver or an upstream
//! would make of it. Names are mapped to ASCII by UTS-46 (the URL Standard's IDNA: case
//! folded, fullwidth forms and ideographic dots mapped, punycode checked), lower case, without
//! the root dot. An IPv4 address is a dotted quad; a host that ends in a number in any
//! other notation (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) is refused, since
//! resolvers read those differently, and is never a name a name rule could match. An
//! IPv4-mapped IPv6 address is its IPv4 address, so CIDR rules see the address the
//! connection would reach.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};

/// A parsed authority.
#[derive(Debug, Clone, PartialEq)]
pub struct Authority {
    pub host: String,
    pub port: Option<u16>,
    pub ip: Option<IpAddr>,
}

/// Parses `host[:port]` into the canonical host (see the module documentation), so
/// `EXAMPLE.com.:443`, `ｅxample.com:443` and `example.com:443` compare equal, and so do
/// `[::ffff:127.0.0.1]` and `127.0.0.1`. Userinfo, an empty label, a name UTS-46 refuses,
/// and a number that is not a dotted quad are errors.
pub fn parse_authority(authority: &str) -> Result<Authority, String> {
    if authority.is_empty() {
        return Err("empty".into());
    }
    if authority.contains('@') {
        return Err("userinfo is not allowed in an authority".into());
    }
    let (name, port) = split_host_port(authority)?;
    if authority.starts_with('[') || name.contains(':') {
        let ip = Ipv6Addr::from_str(name)
            .map_err(|_| format!("{name:?} in brackets is not an IPv6 address"))?;
        let ip = canonical_ip(IpAddr::V6(ip));
        return Ok(Authority {
            host: ip.to_string(),
            port,
            ip: Some(ip),
        });
    }
    match canonical_host(name)? {
        Host::Ip(ip) => Ok(Authority {
            host: ip.to_string(),
            port,
            ip: Some(ip),
        }),
        Host::Name(host) => Ok(Authority {
            host,
            port,
            ip: None,
        }),
    }
}

/// A host in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Lower-case ASCII, labels non-empty, no root dot.
    Name(String),
    Ip(IpAddr),
}

/// The canonical form of a host without port or brackets.
pub fn canonical_host(name: &str) -> Result<Host, String> {
    if let Ok(ip) = IpAddr::from_str(name) {
        return Ok(Host::Ip(canonical_ip(ip)));
    }
    let ascii = to_ascii(name)?;
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    if ascii.is_empty() {
        return Err("empty host".into());
    }
    if let Some(bad) = ascii
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
    {
        return Err(format!("host contains {:?}", bad as char));
    }
    if ascii.split('.').any(str::is_empty) {
        return Err(format!("host {ascii:?} has an empty label"));
    }
    if ascii.len() > 253 || ascii.split('.').any(|label| label.len() > 63) {
        return Err(format!(
            "host {ascii:?} is longer than DNS allows (63 bytes a label, 253 in all)"
        ));
    }
    if ends_in_a_number(ascii) {
        // Only the dotted quad (parsed above) reads the same everywhere: `inet_aton` and
        // the URL Standard take `0177.0.0.1` as 127.0.0.1, Envoy's resolver takes it as
        // 177.0.0.1 and cannot resolve `2130706433` at all. Deciding on one reading while
        // the connection follows another would let a CIDR rule be dodged.
        return Err(match parse_ipv4_forms(ascii) {
            Some(ip) => format!(
                "host {ascii:?} is an IPv4 address in a notation resolvers read differently \
                 ({ip} to some); write it as a dotted quad"
            ),
            None => format!("host {ascii:?} ends in a number but is not an IPv4 address"),
        });
    }
    Ok(Host::Name(ascii.to_owned()))
}

/// Lower-cases an ASCII name; anything else (non-ASCII, `xn--` labels to check) goes
/// through UTS-46 with the URL Standard's settings.
fn to_ascii(name: &str) -> Result<String, String> {
    // ASCII needs no mapping but case; the caller reports any character a name cannot hold.
    let plain = name.is_ascii();
    let has_a_label = || {
        name.split('.')
            .any(|label| label.len() >= 4 && label[..4].eq_ignore_ascii_case("xn--"))
    };
    if plain && !has_a_label() {
        return Ok(name.to_ascii_lowercase());
    }
    idna::uts46::Uts46::new()
        .to_ascii(
            name.as_bytes(),
            idna::uts46::AsciiDenyList::URL,
            idna::uts46::Hyphens::Allow,
            idna::uts46::DnsLength::Ignore,
        )
        .map(|ascii| ascii.into_owned())
        .map_err(|_| format!("host {name:?} is not a valid internationalised domain name"))
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address a dual-stack socket
/// connects to.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A network in the same form as [`canonical_ip`]: `::ffff:127.0.0.0/104` is
/// `127.0.0.0/8`.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}

/// The URL Standard's "ends in a number": the last label is digits, or a `0x` hex number.
fn ends_in_a_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or_default();
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    ipv4_number(last).is_some()
}

/// The URL Standard's IPv4 parser (also what `inet_aton` accepts): one to four parts,
/// each decimal, octal (leading `0`) or hex (`0x`); the last part fills the bytes the
/// others leave. Used to say, in an error, what a refused notation would read as, and by the
/// network guard to classify such a host without asking DNS.
pub fn parse_ipv4_forms(name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let numbers: Vec<u64> = parts
        .iter()
        .map(|part| ipv4_number(part))
        .collect::<Option<_>>()?;
    let (last, init) = numbers.split_last()?;
    if init.iter().any(|n| *n > 255) || *last >= 256u64.pow(5 - numbers.len() as u32) {
        return None;
    }
    let mut address = *last;
    for (i, n) in init.iter().enumerate() {
        address += n << (8 * (3 - i));
    }
    u32::try_from(address).ok().map(Ipv4Addr::from)
}

fn ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        return Some(0);
    }
    // Longer than any value that fits is refused rather than parsed into an overflow.
    if digits.len() > 12 || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Splits `name[:port]`, including bracketed IPv6 (`[::1]:443`). A bare IPv6 address has
/// no port.
pub fn split_host_port(text: &str) -> Result<(&str, Option<u16>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err("unclosed '['".into());
        };
        return match after {
            "" => Ok((addr, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((addr, Some(parse_port(port)?))),
                None => Err(format!("unexpected {after:?} after ']'")),
            },
        };
    }
    match text.rsplit_once(':') {
        // More than one ':' without brackets: a bare IPv6 address.
        Some((name, _)) if name.contains(':') => Ok((text, None)),
        Some((name, port)) => Ok((name, Some(parse_port(port)?))),
        None => Ok((text, None)),
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{port:?} is not a port number (1-65535)")),
        Ok(p) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_table() {
        let ok = [
            ("Example.COM", "example.com", None),
            ("example.com.", "example.com", None),
            ("example.com.:8443", "example.com", Some(8443)),
            ("127.0.0.1:80", "127.0.0.1", Some(80)),
            ("[::ffff:10.0.0.1]:80", "10.0.0.1", Some(80)),
            ("[::1]:443", "::1", Some(443)),
            ("[0:0::1]", "::1", None),
            ("ｅxample.com", "example.com", None),
            ("example\u{3002}com", "example.com", None),
            ("BÜCHER.example", "xn--bcher-kva.example", None),
            ("XN--BCHER-KVA.example", "xn--bcher-kva.example", None),
            ("under_score.example", "under_score.example", None),
        ];
        for (input, host, port) in ok {
            let a = parse_authority(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((a.host.as_str(), a.port), (host, port), "{input}");
        }
        for bad in [
            "",
            "user@host",
            "host:0",
            "host:99999",
            "ho st",
            "[::1",
            ":80",
            "a..b",
            ".a",
            "a.example..",
            "xn--a.example",
            "ex%61mple.com",
            "[example.com]",
            "[fe80::1%25eth0]",
            "4294967296",
            "1.2.3.4.5",
            "example.123",
            "256.0.0.1",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_ipv4_address() {
        for form in [
            "127.0.0.1",
            "[::ffff:7f00:1]",
            "[::ffff:127.0.0.1]",
            "[0:0:0:0:0:ffff:7f00:1]",
        ] {
            let a = parse_authority(form).unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!(a.ip, Some(IpAddr::from([127, 0, 0, 1])), "{form}");
            assert_eq!(a.host, "127.0.0.1", "{form}");
        }
    }

    #[test]
    fn other_ipv4_notations_are_refused_saying_how_they_read() {
        for form in [
            "2130706433",
            "0177.0.0.1",
            "0x7f.1",
            "0X7F.0.0.1",
            "0x7F000001",
            "127.1",
            "127.0.1",
            "017700000001",
            "127.000.0.1",
            "127.0.0.1.",
            "0x",
        ] {
            let error = parse_authority(form).unwrap_err();
            assert!(
                error.contains("(127.0.0.1 to some)") || form == "0x",
                "{form}: {error}"
            );
        }
        assert_eq!(
            parse_ipv4_forms("0xa9fea9fe"),
            Some(Ipv4Addr::new(169, 254, 169, 254))
        );
        assert_eq!(parse_ipv4_forms("0x"), Some(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn mapped_networks_are_their_ipv4_networks() {
        let net: IpNet = "::ffff:127.0.0.0/104".parse().unwrap();
        assert_eq!(canonical_net(net), "127.0.0.0/8".parse::<IpNet>().unwrap());
        let other: IpNet = "fd00::/8".parse().unwrap();
        assert_eq!(canonical_net(other), other);
    }
}
