//! DNS messages (RFC 1035, EDNS from RFC 6891) as far as the policy resolver needs them: the
//! agent's queries in, our answers out, and the upstream resolver's responses read back.
//!
//! Everything the agent sends is untrusted and everything here is bounds-checked: a parse
//! either yields a value or an error, never a panic, on any input (the module is kept apart
//! so that a fuzz target needs one entry: [`parse_query`] and [`parse_response`] over
//! arbitrary bytes). Names are lower-cased and written with dots; a label holding a dot or a
//! byte outside letters, digits, `-` and `_` is written escaped (`\DDD`), so such a name can
//! never equal a policy host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Record type A (IPv4 address).
pub const TYPE_A: u16 = 1;
/// Record type CNAME.
pub const TYPE_CNAME: u16 = 5;
/// Record type AAAA (IPv6 address).
pub const TYPE_AAAA: u16 = 28;
/// Record type OPT (EDNS).
pub const TYPE_OPT: u16 = 41;
/// Class IN.
pub const CLASS_IN: u16 = 1;

/// Response codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// No error (possibly without records: "no data").
    NoError = 0,
    /// The query could not be read.
    FormErr = 1,
    /// The upstream resolver failed.
    ServFail = 2,
    /// The name does not exist.
    NxDomain = 3,
    /// Not a standard query.
    NotImp = 4,
    /// Refused by policy.
    Refused = 5,
}

impl Rcode {
    fn from_bits(bits: u16) -> Rcode {
        match bits & 0xf {
            0 => Rcode::NoError,
            1 => Rcode::FormErr,
            3 => Rcode::NxDomain,
            4 => Rcode::NotImp,
            5 => Rcode::Refused,
            _ => Rcode::ServFail,
        }
    }
}

/// Largest UDP answer we send without EDNS (RFC 1035).
pub const CLASSIC_UDP: usize = 512;
/// Largest UDP payload we offer and accept with EDNS (the DNS flag day's figure).
pub const EDNS_UDP: usize = 1232;
/// Longest name in presentation form.
const MAX_NAME: usize = 255;
/// Most compression pointers followed while reading one name.
const MAX_POINTERS: usize = 32;
/// Longest CNAME chain followed.
const MAX_CHAIN: usize = 16;

const HEADER: usize = 12;
const QR: u16 = 0x8000;
const OPCODE: u16 = 0x7800;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than a header: not even an id to answer to.
    #[error("message shorter than a DNS header")]
    NoHeader,
    /// The header is there, the rest is not a standard query (answer FORMERR or NOTIMP with
    /// the id).
    #[error("malformed query: {why}")]
    Malformed {
        /// The query's id.
        id: u16,
        /// The code to answer with.
        rcode: Rcode,
        /// What is wrong.
        why: &'static str,
    },
    /// A response that does not answer our question, or cannot be read.
    #[error("unusable response: {0}")]
    Response(&'static str),
}

/// A standard query from the agent: one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The id, echoed in the answer.
    pub id: u16,
    /// Whether recursion was asked for (echoed).
    pub recursion: bool,
    /// The name, lower-cased, without the trailing dot.
    pub name: String,
    /// Record type asked for.
    pub qtype: u16,
    /// Record class asked for.
    pub qclass: u16,
    /// The question section as sent (echoed byte for byte: case and all).
    question: Vec<u8>,
    /// The largest UDP answer the client accepts.
    pub udp_limit: usize,
    /// Whether the query carried EDNS (then so does the answer).
    pub edns: bool,
}

/// Reads a query. Anything but one standard question (with at most an OPT record in the
/// additional section) is an error carrying the code to answer with.
pub fn parse_query(msg: &[u8]) -> Result<Query, WireError> {
    let header = Header::read(msg).ok_or(WireError::NoHeader)?;
    let bad = |rcode, why| WireError::Malformed {
        id: header.id,
        rcode,
        why,
    };
    if header.flags & QR != 0 {
        return Err(bad(Rcode::FormErr, "a response, not a query"));
    }
    if header.flags & OPCODE != 0 {
        return Err(bad(Rcode::NotImp, "not a standard query"));
    }
    if header.qdcount != 1 || header.ancount != 0 || header.nscount != 0 || header.arcount > 1 {
        return Err(bad(Rcode::FormErr, "not exactly one question"));
    }
    let (name, end) =
        read_name(msg, HEADER).ok_or_else(|| bad(Rcode::FormErr, "unreadable name"))?;
    let qtype = read_u16(msg, end).ok_or_else(|| bad(Rcode::FormErr, "truncated question"))?;
    let qclass = read_u16(msg, end + 2).ok_or_else(|| bad(Rcode::FormErr, "truncated question"))?;
    let question = msg[HEADER..end + 4].to_vec();
    let mut udp_limit = CLASSIC_UDP;
    let mut edns = false;
    if header.arcount == 1 {
        let record = Record::read(msg, end + 4)
            .ok_or_else(|| bad(Rcode::FormErr, "unreadable additional record"))?;
        if record.rtype != TYPE_OPT || !record.name.is_empty() {
            return Err(bad(Rcode::FormErr, "additional record other than OPT"));
        }
        edns = true;
        // The OPT record's class is the requester's UDP payload size.
        udp_limit = usize::from(record.class).clamp(CLASSIC_UDP, EDNS_UDP);
    }
    Ok(Query {
        id: header.id,
        recursion: header.flags & RD != 0,
        name,
        qtype,
        qclass,
        question,
        udp_limit,
        edns,
    })
}

/// One address in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The address.
    pub ip: IpAddr,
    /// Seconds it may be kept.
    pub ttl: u32,
}

/// Builds the answer to `query`: `rcode`, with `addresses` as records owned by the question's
/// name. At most `limit` bytes: when the records do not fit, none are sent and the answer is
/// marked truncated (the client then asks again over TCP).
pub fn answer(query: &Query, rcode: Rcode, addresses: &[Address], limit: usize) -> Vec<u8> {
    let build = |addresses: &[Address], truncated: bool| {
        let mut flags = QR | RA | rcode as u16;
        if query.recursion {
            flags |= RD;
        }
        if truncated {
            flags |= TC;
        }
        let mut out = Vec::with_capacity(HEADER + query.question.len() + 28 * addresses.len());
        for field in [
            query.id,
            flags,
            1,
            addresses.len() as u16,
            0,
            u16::from(query.edns),
        ] {
            out.extend_from_slice(&field.to_be_bytes());
        }
        out.extend_from_slice(&query.question);
        for address in addresses {
            // A pointer to the question's name, right after the header.
            out.extend_from_slice(&[0xc0, HEADER as u8]);
            let (rtype, data): (u16, Vec<u8>) = match address.ip {
                IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
                IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
            };
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&address.ttl.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(&data);
        }
        if query.edns {
            out.extend_from_slice(&opt_record());
        }
        out
    };
    let full = build(addresses, false);
    if full.len() <= limit {
        full
    } else {
        build(&[], true)
    }
}

/// A recursive query for `name` and `qtype`, with EDNS so that big answers fit in UDP.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + name.len() + 2 + 4 + 11);
    for field in [id, RD, 1, 0, 0, 1] {
        out.extend_from_slice(&field.to_be_bytes());
    }
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&opt_record());
    out
}

fn opt_record() -> [u8; 11] {
    let mut opt = [0u8; 11];
    opt[1..3].copy_from_slice(&TYPE_OPT.to_be_bytes());
    opt[3..5].copy_from_slice(&(EDNS_UDP as u16).to_be_bytes());
    opt
}

/// What the upstream resolver said about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Its code.
    pub rcode: Rcode,
    /// Whether it was truncated (ask again over TCP).
    pub truncated: bool,
    /// The addresses of the asked type at the end of the CNAME chain from the asked name,
    /// each with the smallest TTL along its chain.
    pub addresses: Vec<Address>,
}

/// Reads the upstream resolver's response to our query `id` for `name` and `qtype`.
pub fn parse_response(msg: &[u8], id: u16, name: &str, qtype: u16) -> Result<Response, WireError> {
    let bad = WireError::Response;
    let header = Header::read(msg).ok_or(bad("shorter than a header"))?;
    if header.id != id || header.flags & QR == 0 {
        return Err(bad("not the response to our query"));
    }
    let rcode = Rcode::from_bits(header.flags);
    let truncated = header.flags & TC != 0;
    let mut at = HEADER;
    for _ in 0..header.qdcount {
        let (asked, end) = read_name(msg, at).ok_or(bad("unreadable question"))?;
        if asked != name || read_u16(msg, end) != Some(qtype) {
            return Err(bad("answers another question"));
        }
        at = end + 4;
    }
    let mut records = Vec::new();
    for _ in 0..header.ancount {
        let record = Record::read(msg, at).ok_or(bad("unreadable answer record"))?;
        at = record.end;
        records.push(record);
    }
    // Follow the chain from the asked name, keeping the smallest TTL seen on the way.
    let (mut owner, mut chain_ttl) = (name.to_owned(), u32::MAX);
    for _ in 0..MAX_CHAIN {
        let next = records
            .iter()
            .find(|r| r.rtype == TYPE_CNAME && r.class == CLASS_IN && r.name == owner);
        let Some(cname) = next else { break };
        let (target, _) = read_name(msg, cname.data).ok_or(bad("unreadable CNAME"))?;
        chain_ttl = chain_ttl.min(cname.ttl);
        owner = target;
    }
    let addresses = records
        .iter()
        .filter(|r| r.rtype == qtype && r.class == CLASS_IN && r.name == owner)
        .filter_map(|r| {
            let data = msg.get(r.data..r.data + r.len)?;
            let ip = match (r.rtype, data.len()) {
                (TYPE_A, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?)),
                (TYPE_AAAA, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?)),
                _ => return None,
            };
            Some(Address {
                ip,
                ttl: r.ttl.min(chain_ttl),
            })
        })
        .collect();
    Ok(Response {
        rcode,
        truncated,
        addresses,
    })
}

struct Header {
    id: u16,
    flags: u16,
    qdcount: u16,
    ancount: u16,
    nscount: u16,
    arcount: u16,
}

impl Header {
    fn read(msg: &[u8]) -> Option<Header> {
        Some(Header {
            id: read_u16(msg, 0)?,
            flags: read_u16(msg, 2)?,
            qdcount: read_u16(msg, 4)?,
            ancount: read_u16(msg, 6)?,
            nscount: read_u16(msg, 8)?,
            arcount: read_u16(msg, 10)?,
        })
    }
}

/// A resource record: its fields and where its data lies in the message.
struct Record {
    name: String,
    rtype: u16,
    class: u16,
    ttl: u32,
    data: usize,
    len: usize,
    end: usize,
}

impl Record {
    fn read(msg: &[u8], at: usize) -> Option<Record> {
        let (name, at) = read_name(msg, at)?;
        let rtype = read_u16(msg, at)?;
        let class = read_u16(msg, at + 2)?;
        let ttl = u32::from_be_bytes(msg.get(at + 4..at + 8)?.try_into().ok()?);
        let len = usize::from(read_u16(msg, at + 8)?);
        let data = at + 10;
        msg.get(data..data + len)?;
        Some(Record {
            name,
            rtype,
            class,
            // RFC 2181: a TTL with the top bit set is zero.
            ttl: if ttl > i32::MAX as u32 { 0 } else { ttl },
            data,
            len,
            end: data + len,
        })
    }
}

fn read_u16(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(msg.get(at..at + 2)?.try_into().ok()?))
}

/// Reads the name at `at` (following compression pointers); returns it and where the field
/// ends in the message.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    let mut pointers = 0;
    loop {
        let len = *msg.get(at)?;
        match len & 0xc0 {
            0xc0 => {
                let target = usize::from(read_u16(msg, at)? & 0x3fff);
                end.get_or_insert(at + 2);
                pointers += 1;
                // Only backwards, and not too many: no loops.
                if pointers > MAX_POINTERS || target >= at {
                    return None;
                }
                at = target;
            }
            0 if len == 0 => {
                return Some((name, end.unwrap_or(at + 1)));
            }
            0 => {
                let label = msg.get(at + 1..at + 1 + usize::from(len))?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    match b {
                        b'A'..=b'Z' => name.push(char::from(b.to_ascii_lowercase())),
                        b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => name.push(char::from(b)),
                        _ => name.push_str(&format!("\\{b:03}")),
                    }
                }
                if name.len() > MAX_NAME {
                    return None;
                }
                at += 1 + usize::from(len);
            }
            // 0x40 and 0x80: extended label types, obsolete.
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dig api.example.com A +noedns` as sent by glibc (id 0xabcd, RD).
    fn glibc_query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = query(0xabcd, name, qtype);
        // Without the OPT record, as glibc sends it by default.
        q.truncate(q.len() - 11);
        q[11] = 0;
        q
    }

    #[test]
    fn reads_a_query_and_answers_it() {
        let mut raw = glibc_query("Api.Example.COM", TYPE_AAAA);
        let q = parse_query(&raw).unwrap();
        assert_eq!(
            (
                q.id,
                q.name.as_str(),
                q.qtype,
                q.qclass,
                q.edns,
                q.udp_limit
            ),
            (0xabcd, "api.example.com", TYPE_AAAA, CLASS_IN, false, 512)
        );
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        let out = answer(&q, Rcode::NoError, &[Address { ip: v6, ttl: 30 }], 512);
        // The question is echoed as sent (case included), and the answer reads back.
        assert_eq!(&out[12..12 + q.question.len()], &raw[12..]);
        let back = parse_response(&out, 0xabcd, "api.example.com", TYPE_AAAA).unwrap();
        assert_eq!(back.addresses, [Address { ip: v6, ttl: 30 }]);
        assert_eq!(back.rcode, Rcode::NoError);
        // A response is not a query.
        raw[2] |= 0x80;
        assert!(matches!(
            parse_query(&raw),
            Err(WireError::Malformed {
                rcode: Rcode::FormErr,
                ..
            })
        ));
    }

    #[test]
    fn edns_sets_the_size_and_too_many_records_truncate() {
        let q = parse_query(&query(7, "many.example", TYPE_A)).unwrap();
        assert!(q.edns);
        assert_eq!(q.udp_limit, EDNS_UDP);
        let many: Vec<Address> = (0..100u8)
            .map(|i| Address {
                ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)),
                ttl: 5,
            })
            .collect();
        let out = answer(&q, Rcode::NoError, &many, 512);
        let back = parse_response(&out, 7, "many.example", TYPE_A).unwrap();
        assert!(back.truncated && back.addresses.is_empty());
        let tcp = answer(&q, Rcode::NoError, &many, 65535);
        assert_eq!(
            parse_response(&tcp, 7, "many.example", TYPE_A)
                .unwrap()
                .addresses
                .len(),
            100
        );
    }

    #[test]
    fn follows_cnames_with_the_smallest_ttl() {
        // Response: www.example.com CNAME edge.cdn.example (ttl 60), edge A 198.51.100.7
        // (ttl 300), plus an unrelated A record that must not be taken.
        let mut r = query(9, "www.example.com", TYPE_A);
        r.truncate(r.len() - 11);
        r[2] |= 0x80;
        r[7] = 3; // ancount
        r[11] = 0;
        let name_at = 12u8;
        let mut record = |owner: &[u8], rtype: u16, ttl: u32, data: &[u8]| {
            r.extend_from_slice(owner);
            r.extend_from_slice(&rtype.to_be_bytes());
            r.extend_from_slice(&CLASS_IN.to_be_bytes());
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(data);
        };
        let edge = b"\x04edge\x03cdn\x07example\x00";
        record(&[0xc0, name_at], TYPE_CNAME, 60, edge);
        record(edge, TYPE_A, 300, &[198, 51, 100, 7]);
        record(b"\x05other\x00", TYPE_A, 300, &[10, 0, 0, 1]);
        let back = parse_response(&r, 9, "www.example.com", TYPE_A).unwrap();
        assert_eq!(
            back.addresses,
            [Address {
                ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
                ttl: 60
            }]
        );
    }

    #[test]
    fn hostile_names_are_refused_or_escaped() {
        // A pointer loop, a forward pointer, a name longer than 255.
        let mut looped = glibc_query("a", TYPE_A);
        looped.splice(12..15, [0xc0, 12]);
        assert!(parse_query(&looped).is_err());
        let mut long = glibc_query("x", TYPE_A);
        let label = [b'a'; 63];
        let mut name = Vec::new();
        for _ in 0..5 {
            name.push(63);
            name.extend_from_slice(&label);
        }
        name.push(0);
        long.splice(12..15, name);
        assert!(parse_query(&long).is_err());
        // A dot inside a label cannot pass for two labels.
        let mut dotted = glibc_query("x", TYPE_A);
        dotted.splice(12..15, *b"\x07a.b.com\x00");
        assert_eq!(parse_query(&dotted).unwrap().name, "a\\046b\\046com");
        for cut in 0..dotted.len() {
            let _ = parse_query(&dotted[..cut]);
            let _ = parse_response(&dotted[..cut], 0xabcd, "x", TYPE_A);
        }
    }
}
