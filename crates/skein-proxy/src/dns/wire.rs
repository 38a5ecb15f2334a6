//! The DNS wire format (RFC 1035 §4, RFC 3596), as much of it as the proxy's DNS server
//! needs: the 12-byte header, exactly one question, and replies carrying A and AAAA
//! records. Pure and bounded: no I/O, no allocation beyond the reply.
//!
//! Hand-written on purpose: hickory-proto would do it, but it pulls about twenty crates
//! (the ICU stack among them) into the data plane for two record types. Forwarded queries
//! never pass through here beyond [`parse_query`]: they go upstream byte for byte.
//!
//! A query's question may not use compression pointers (nothing precedes it to point to),
//! so they are refused and no name can loop. Whatever follows the question (an EDNS0 OPT
//! record, say) is ignored for the proxy's own answers, which carry no OPT record: the
//! server answers as one without EDNS, which every client handles.

use std::net::IpAddr;

/// Length of the header.
pub const HEADER_LEN: usize = 12;
/// Largest UDP reply a client without EDNS accepts; the proxy's own replies stay within.
pub const MAX_UDP_REPLY: usize = 512;
/// Most address records in one reply (a subset of the service's addresses beyond).
pub const MAX_RECORDS: usize = 16;
/// Longest name on the wire, length bytes and the root's zero included.
pub const MAX_NAME: usize = 255;

/// QTYPE of an IPv4 address record.
pub const TYPE_A: u16 = 1;
/// QTYPE of an IPv6 address record.
pub const TYPE_AAAA: u16 = 28;
/// QTYPE asking for every record type.
pub const TYPE_ANY: u16 = 255;
/// The Internet class, the only one the proxy answers itself.
pub const CLASS_IN: u16 = 1;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const OPCODE_QUERY: u8 = 0;
/// A compression pointer to offset 12, where the question's name starts.
const POINTER_TO_QUESTION: [u8; 2] = [0xC0, 0x0C];

/// The header fields a reply needs from its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The query's ID, copied into the reply.
    pub id: u16,
    /// The flags word (QR, opcode, AA, TC, RD, RA, Z, RCODE).
    pub flags: u16,
    /// How many questions the message says it carries.
    pub qdcount: u16,
}

impl Header {
    /// The header of `bytes`, or `None` when there are fewer than 12.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let word = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        (bytes.len() >= HEADER_LEN).then(|| Header {
            id: word(0),
            flags: word(2),
            qdcount: word(4),
        })
    }

    /// The operation code (0: a standard query).
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0x0F) as u8
    }

    /// True for a response (QR set).
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_QR != 0
    }

    /// A reply with `rcode`, no question and no records, not authoritative (the proxy
    /// could not read the question, so it vouches for no name).
    pub fn failure(&self, rcode: Rcode) -> Vec<u8> {
        reply_header(self, rcode, false, 0, 0)
    }
}

/// A response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// No error (with records, or none: NODATA).
    NoError = 0,
    /// The query could not be understood.
    FormErr = 1,
    /// The server failed (here: no upstream answered, or too many forwards in flight).
    ServFail = 2,
    /// The name does not exist.
    NxDomain = 3,
}

/// The one question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name in presentation form, ASCII letters lowercased, without the trailing dot
    /// (the root is empty). A byte that is not a printable ASCII character, and `.` or
    /// `\` inside a label, is written `\DDD`, so that each dot separates labels.
    pub name: String,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

/// A query the proxy can answer or forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    /// Its header.
    pub header: Header,
    /// Its question.
    pub question: Question,
    /// The question as received (case preserved), echoed in replies.
    raw_question: &'a [u8],
}

/// Why a message is not a query the proxy can handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short to hold a header: there is no ID to answer, so it is dropped.
    #[error("{0} bytes is shorter than a DNS header")]
    Short(usize),
    /// A response (QR set) is never answered, so that two servers cannot ping-pong.
    #[error("the message is a response, not a query")]
    Response,
    /// The header parsed but the rest does not; answered FORMERR.
    #[error("{reason}")]
    Malformed {
        /// The header, to build the FORMERR reply from.
        header: Header,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads the header and the one question of a query.
pub fn parse_query(bytes: &[u8]) -> Result<Query<'_>, WireError> {
    let header = Header::parse(bytes).ok_or(WireError::Short(bytes.len()))?;
    if header.is_response() {
        return Err(WireError::Response);
    }
    let malformed = |reason| WireError::Malformed { header, reason };
    if header.opcode() != OPCODE_QUERY {
        return Err(malformed("the opcode is not QUERY"));
    }
    if header.qdcount != 1 {
        return Err(malformed("a query must carry exactly one question"));
    }
    let (name, end) = parse_name(bytes, HEADER_LEN).map_err(malformed)?;
    let fixed = bytes
        .get(end..end + 4)
        .ok_or(malformed("the question ends before its type and class"))?;
    let question = Question {
        name,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
    };
    Ok(Query {
        header,
        question,
        raw_question: &bytes[HEADER_LEN..end + 4],
    })
}

/// Reads an uncompressed name starting at `at`: its presentation form and where it ends.
fn parse_name(bytes: &[u8], at: usize) -> Result<(String, usize), &'static str> {
    let mut name = String::new();
    let mut i = at;
    loop {
        let len = *bytes
            .get(i)
            .ok_or("the question name runs past the message")?;
        match len & 0xC0 {
            0 => {}
            0xC0 => return Err("a compression pointer in a query's question"),
            _ => return Err("a reserved label type in the question name"),
        }
        i += 1;
        if len == 0 {
            return Ok((name, i));
        }
        let label = bytes
            .get(i..i + usize::from(len))
            .ok_or("a question label runs past the message")?;
        i += label.len();
        if i - at >= MAX_NAME {
            return Err("the question name is longer than 255 bytes");
        }
        if !name.is_empty() {
            name.push('.');
        }
        push_label(&mut name, label);
    }
}

/// Appends one label, lowercased, escaping what would be ambiguous or unprintable.
fn push_label(out: &mut String, label: &[u8]) {
    for &b in label {
        match b {
            b'.' | b'\\' => out.push_str(&format!("\\{b:03}")),
            0x21..=0x7E => out.push(char::from(b.to_ascii_lowercase())),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
}

impl Query<'_> {
    /// The proxy's own, authoritative reply: `rcode` and a record for each of `addresses`
    /// (at most [`MAX_RECORDS`], and no more than fit in [`MAX_UDP_REPLY`] bytes), each
    /// naming the question's name by a compression pointer.
    pub fn answer(&self, rcode: Rcode, ttl: u32, addresses: &[IpAddr]) -> Vec<u8> {
        let mut records = Vec::new();
        let mut count = 0u16;
        let mut size = HEADER_LEN + self.raw_question.len();
        for address in addresses.iter().take(MAX_RECORDS) {
            let record = record(*address, ttl);
            if size + record.len() > MAX_UDP_REPLY {
                break;
            }
            size += record.len();
            records.extend_from_slice(&record);
            count += 1;
        }
        let mut out = reply_header(&self.header, rcode, true, 1, count);
        out.extend_from_slice(self.raw_question);
        out.extend_from_slice(&records);
        out
    }

    /// A reply with `rcode`, the question echoed and no records, not authoritative (a
    /// SERVFAIL when forwarding failed).
    pub fn failure(&self, rcode: Rcode) -> Vec<u8> {
        let mut out = reply_header(&self.header, rcode, false, 1, 0);
        out.extend_from_slice(self.raw_question);
        out
    }
}

/// A reply's header: the query's ID, opcode and RD; QR and RA set; AA as given.
fn reply_header(query: &Header, rcode: Rcode, authoritative: bool, qd: u16, an: u16) -> Vec<u8> {
    let opcode = query.flags & 0x7800;
    let aa = if authoritative { FLAG_AA } else { 0 };
    let flags = FLAG_QR | opcode | aa | (query.flags & FLAG_RD) | FLAG_RA | rcode as u16;
    let mut out = Vec::with_capacity(MAX_UDP_REPLY);
    for word in [query.id, flags, qd, an, 0, 0] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out
}

/// One A or AAAA record for the question's name.
fn record(address: IpAddr, ttl: u32) -> Vec<u8> {
    let (rtype, data) = match address {
        IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
        IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
    };
    let mut out = Vec::with_capacity(12 + data.len());
    out.extend_from_slice(&POINTER_TO_QUESTION);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(&data);
    out
}

/// A query for `name` (dotted, no escapes) of `qtype`, class IN, RD set: what a stub
/// resolver sends.
#[cfg(test)]
pub(crate) fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for word in [id, FLAG_RD, 1, 0, 0, 0] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn word(bytes: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([bytes[at], bytes[at + 1]])
    }

    fn malformed(bytes: &[u8]) -> &'static str {
        match parse_query(bytes) {
            Err(WireError::Malformed { reason, .. }) => reason,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn a_query_parses_lowercased_with_its_question_kept_as_sent() {
        let bytes = encode_query(0xBEEF, "Restaurant.Default.svc.cluster.local", TYPE_AAAA);
        let q = parse_query(&bytes).unwrap();
        assert_eq!(q.header.id, 0xBEEF);
        assert_eq!(q.question.name, "restaurant.default.svc.cluster.local");
        assert_eq!((q.question.qtype, q.question.qclass), (TYPE_AAAA, CLASS_IN));
        assert_eq!(q.raw_question, &bytes[HEADER_LEN..]);
        let root = encode_query(1, "", 2);
        assert_eq!(parse_query(&root).unwrap().question.name, "");
    }

    #[test]
    fn odd_bytes_in_a_label_are_escaped_so_dots_only_separate_labels() {
        let mut bytes = encode_query(1, "x", TYPE_A);
        bytes.splice(
            HEADER_LEN..HEADER_LEN + 2,
            [5, b'a', b'.', b'B', b'\\', 0xFF],
        );
        let q = parse_query(&bytes).unwrap();
        assert_eq!(q.question.name, "a\\046b\\092\\255");
    }

    #[test]
    fn an_edns_opt_record_after_the_question_is_ignored() {
        let mut bytes = encode_query(7, "restaurant", TYPE_A);
        bytes[11] = 1; // ARCOUNT
        bytes.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]);
        let q = parse_query(&bytes).unwrap();
        assert_eq!(q.question.name, "restaurant");
        let reply = q.answer(Rcode::NoError, 5, &["198.18.1.10".parse().unwrap()]);
        assert_eq!(
            word(&reply, 10),
            0,
            "no OPT record in the proxy's own answers"
        );
    }

    #[test]
    fn what_cannot_be_answered_is_refused_with_a_reason() {
        assert_eq!(parse_query(&[0; 11]), Err(WireError::Short(11)));
        let mut response = encode_query(1, "a", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(WireError::Response));
        let mut notify = encode_query(1, "a", TYPE_A);
        notify[2] |= 4 << 3;
        assert_eq!(malformed(&notify), "the opcode is not QUERY");
        let mut two = encode_query(1, "a", TYPE_A);
        two[5] = 2;
        assert!(malformed(&two).contains("exactly one question"));
        let mut pointer = encode_query(1, "a", TYPE_A);
        pointer.splice(HEADER_LEN..HEADER_LEN + 3, [0xC0, 0x0C]);
        assert!(malformed(&pointer).contains("compression pointer"));
        let mut long_label = encode_query(1, "a", TYPE_A);
        long_label[HEADER_LEN] = 64;
        assert!(malformed(&long_label).contains("reserved label type"));
        let long_name = [&"a".repeat(63); 4].map(|s| s.as_str()).join(".");
        assert!(malformed(&encode_query(1, &long_name, TYPE_A)).contains("longer than 255"));
        let just_fits = [
            &"a".repeat(63),
            &"a".repeat(63),
            &"a".repeat(63),
            &"a".repeat(61),
        ]
        .map(|s| s.as_str())
        .join(".");
        assert!(parse_query(&encode_query(1, &just_fits, TYPE_A)).is_ok());
        let whole = encode_query(1, "a", TYPE_A);
        assert!(malformed(&whole[..whole.len() - 1]).contains("before its type and class"));
        assert!(malformed(&whole[..HEADER_LEN + 1]).contains("runs past"));
    }

    #[test]
    fn an_answer_copies_the_query_and_points_at_its_name() {
        let bytes = encode_query(0x1234, "restaurant", TYPE_ANY);
        let q = parse_query(&bytes).unwrap();
        let addresses: Vec<IpAddr> =
            vec!["198.18.1.10".parse().unwrap(), "fd00::10".parse().unwrap()];
        let reply = q.answer(Rcode::NoError, 30, &addresses);
        assert_eq!(word(&reply, 0), 0x1234);
        assert_eq!(word(&reply, 2), 0x8000 | 0x0400 | 0x0100 | 0x0080);
        assert_eq!(
            [word(&reply, 4), word(&reply, 6), word(&reply, 8)],
            [1, 2, 0]
        );
        let question_end = HEADER_LEN + q.raw_question.len();
        assert_eq!(&reply[HEADER_LEN..question_end], q.raw_question);
        let a = &reply[question_end..question_end + 16];
        assert_eq!(
            a,
            [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 198, 18, 1, 10]
        );
        let aaaa = &reply[question_end + 16..];
        assert_eq!(&aaaa[..12], [0xC0, 0x0C, 0, 28, 0, 1, 0, 0, 0, 30, 0, 16]);
        assert_eq!(
            aaaa[12..],
            "fd00::10".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
    }

    #[test]
    fn failures_copy_id_opcode_and_rd_and_are_not_authoritative() {
        let q_bytes = encode_query(9, "outside.test", TYPE_A);
        let q = parse_query(&q_bytes).unwrap();
        let servfail = q.failure(Rcode::ServFail);
        assert_eq!(word(&servfail, 2), 0x8000 | 0x0100 | 0x0080 | 2);
        assert_eq!(word(&servfail, 4), 1);
        let mut status = encode_query(10, "a", TYPE_A);
        status[2] = 2 << 3; // opcode STATUS, RD clear
        let Err(WireError::Malformed { header, .. }) = parse_query(&status) else {
            panic!()
        };
        let formerr = header.failure(Rcode::FormErr);
        assert_eq!(formerr.len(), HEADER_LEN);
        assert_eq!(word(&formerr, 0), 10);
        assert_eq!(word(&formerr, 2), 0x8000 | (2 << 11) | 0x0080 | 1);
    }

    #[test]
    fn answers_hold_at_most_sixteen_records_within_512_bytes() {
        let v4: Vec<IpAddr> = (0..40).map(|i| IpAddr::from([198, 18, 1, i])).collect();
        let bytes = encode_query(1, "restaurant", TYPE_A);
        let reply = parse_query(&bytes).unwrap().answer(Rcode::NoError, 5, &v4);
        assert_eq!(word(&reply, 6), MAX_RECORDS as u16);
        let v6: Vec<IpAddr> = (0..40u16)
            .map(|i| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i]))
            .collect();
        let long = [&"a".repeat(63); 3].map(|s| s.as_str()).join(".");
        let bytes = encode_query(1, &long, TYPE_AAAA);
        let reply = parse_query(&bytes).unwrap().answer(Rcode::NoError, 5, &v6);
        assert!(reply.len() <= MAX_UDP_REPLY, "{}", reply.len());
        let records = word(&reply, 6) as usize;
        assert!(records > 0 && records < MAX_RECORDS);
        assert_eq!(
            reply.len(),
            HEADER_LEN + bytes.len() - HEADER_LEN + records * 28
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_answers_stay_small(bytes in proptest::collection::vec(any::<u8>(), 0..600), n in 0usize..40) {
            if let Ok(q) = parse_query(&bytes) {
                let addresses: Vec<IpAddr> = (0..n as u16).map(|i| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i])).collect();
                let reply = q.answer(Rcode::NoError, 5, &addresses);
                prop_assert!(reply.len() <= MAX_UDP_REPLY);
                prop_assert!(parse_query(&bytes).unwrap().question.name.len() <= 4 * MAX_NAME);
            }
        }
    }
}
