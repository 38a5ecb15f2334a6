//! HTTP/2 frames written by hand, for attacks no well-behaved client library will make:
//! rapid reset, CONTINUATION floods, HPACK bombs, SETTINGS and PING floods (RFC 9113
//! framing, RFC 7541 header encoding without Huffman coding).

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types.
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// Flags.
pub const END_STREAM: u8 = 0x1;
/// Flags.
pub const END_HEADERS: u8 = 0x4;

/// One frame: a 9-byte header and its payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A SETTINGS frame with these `(id, value)` pairs (none: an empty one).
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, &p)
}

/// A SETTINGS acknowledgement.
pub fn settings_ack() -> Vec<u8> {
    frame(kind::SETTINGS, 0x1, 0, &[])
}

/// A PING with `data`.
pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(kind::PING, 0, 0, &data)
}

/// RST_STREAM with `code` (8: CANCEL).
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// WINDOW_UPDATE by `increment`.
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(kind::WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix, the first byte's other bits `first`.
pub fn integer(first: u8, n: u8, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    integer(0, 7, s.len(), out);
    out.extend_from_slice(s);
}

/// A literal header field without indexing, new name.
pub fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    string(name, out);
    string(value, out);
}

/// A literal header field with incremental indexing, new name: it enters the dynamic
/// table (index 62 right after).
pub fn indexed_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x40);
    string(name, out);
    string(value, out);
}

/// An indexed header field (static table 1–61, dynamic from 62).
pub fn indexed(index: usize, out: &mut Vec<u8>) {
    integer(0x80, 7, index, out);
}

/// The header block of `GET path` on `authority` over `http`.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    indexed(2, &mut b); // :method GET
    indexed(6, &mut b); // :scheme http
    literal(b":path", path.as_bytes(), &mut b);
    literal(b":authority", authority.as_bytes(), &mut b);
    b
}

/// A HEADERS frame carrying `block`.
pub fn headers(stream: u32, block: &[u8], flags: u8) -> Vec<u8> {
    frame(kind::HEADERS, flags, stream, block)
}

/// A CONTINUATION frame carrying `block`.
pub fn continuation(stream: u32, block: &[u8], flags: u8) -> Vec<u8> {
    frame(kind::CONTINUATION, flags, stream, block)
}

/// A DATA frame.
pub fn data(stream: u32, payload: &[u8], flags: u8) -> Vec<u8> {
    frame(kind::DATA, flags, stream, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_rfc_7541_c_1() {
        let mut out = Vec::new();
        integer(0, 5, 10, &mut out);
        assert_eq!(out, [0b01010]);
        out.clear();
        integer(0, 5, 1337, &mut out);
        assert_eq!(out, [31, 154, 10]);
        out.clear();
        integer(0, 8, 42, &mut out);
        assert_eq!(out, [42]);
    }

    #[test]
    fn a_frame_header_is_nine_bytes_big_endian() {
        let f = frame(kind::PING, 0, 0, &[1; 8]);
        assert_eq!(&f[..9], &[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        assert_eq!(rst_stream(3, 8)[5..9], [0, 0, 0, 3]);
    }
}
