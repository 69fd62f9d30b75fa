//! MIME writing helpers: header sanitising, folding and RFC 2047 encoding, quoted-printable,
//! base64 with 76-column lines, and multipart boundaries derived from a caller-supplied seed.
//!
//! Everything written into a message body uses CRLF. Header *values* returned by the helpers
//! here are folded with a bare LF followed by one space (`"a\n b"`), the form a milter hands
//! to Postfix; [`crlf_fold`] turns such a value into wire form.

use base64::Engine as _;

use super::types::Instant;

/// Line terminator of everything pecora writes.
pub const CRLF: &str = "\r\n";

/// Folding target of RFC 5322 §2.1.1.
pub const FOLD_AT: usize = 78;

/// Hard limit of RFC 5322 §2.1.1 (without the CRLF).
pub const MAX_LINE: usize = 998;

/// Largest payload of one RFC 2047 encoded-word before base64 (45 bytes → 60 characters,
/// so `=?ISO-8859-1?B?…?=` stays within 75 characters).
const EW_CHUNK: usize = 45;

/// Errors of the header writers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MimeError {
    /// A structured header value holds a token that cannot be folded under 998 octets.
    #[error("header {name}: a token of {len} octets cannot be folded under 998")]
    LineTooLong { name: String, len: usize },
}

/// Replaces CR, LF and TAB by a space and drops NUL, the other C0 controls and DEL, so a value
/// can never end a header line early or inject a new header.
pub fn sanitize_header_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\r' | '\n' | '\t' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Cleans an addr-spec for use in a header: sanitises it as [`sanitize_header_value`] does and
/// also drops whitespace, angle brackets, quotes, commas and semicolons, which would change
/// the address list structure.
pub fn sanitize_address(s: &str) -> String {
    sanitize_header_value(s)
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '<' | '>' | '"' | ',' | ';' | '\\'))
        .collect()
}

/// Cleans a msg-id for use in a header: the same as [`sanitize_address`] (angle brackets
/// included), so callers put the brackets back themselves.
pub fn sanitize_msg_id(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_prefix('<').unwrap_or(s);
    let s = s.strip_suffix('>').unwrap_or(s);
    sanitize_address(s)
}

/// `<id>` in msg-id form, sanitised.
pub fn angle(id: &str) -> String {
    format!("<{}>", sanitize_msg_id(id))
}

/// Folds an already sanitised value at spaces so that every line, the first one counting
/// `Name: `, stays within [`FOLD_AT`] columns where a space allows it. Lines are joined with
/// `"\n"`; the space at which a line is broken starts the continuation line.
///
/// Returns an error when a single token is longer than [`MAX_LINE`]: such a value cannot be
/// written legally and must not be truncated silently.
pub fn fold(name: &str, value: &str) -> Result<String, MimeError> {
    let mut out = String::with_capacity(value.len() + 8);
    let mut col = name.len() + 2;
    let mut first = true;
    for word in value.split(' ') {
        if word.len() > MAX_LINE - 1 {
            return Err(MimeError::LineTooLong {
                name: name.to_string(),
                len: word.len(),
            });
        }
        if first {
            out.push_str(word);
            col += word.len();
            first = false;
            continue;
        }
        if col + 1 + word.len() > FOLD_AT && col > 1 && !word.is_empty() {
            out.push_str("\n ");
            col = 1;
        } else {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    Ok(out)
}

/// Converts an LF-folded value into wire form (CRLF before each continuation).
pub fn crlf_fold(value: &str) -> String {
    value.replace('\n', CRLF)
}

/// True when the string is printable US-ASCII (space included).
fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// True when every character fits ISO-8859-1.
pub fn fits_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) <= 0xff)
}

/// RFC 2047 `B` encoded-words for `text`, in ISO-8859-1 when every character fits, otherwise
/// UTF-8, each word at most 75 characters and never splitting a character. Words are joined
/// by single spaces (ignored between encoded-words by decoders).
pub fn encoded_words(text: &str) -> String {
    let latin1 = fits_latin1(text);
    let (charset, words): (&str, Vec<Vec<u8>>) = if latin1 {
        let bytes: Vec<u8> = text.chars().map(|c| c as u32 as u8).collect();
        (
            "ISO-8859-1",
            bytes.chunks(EW_CHUNK).map(<[u8]>::to_vec).collect(),
        )
    } else {
        let mut words = Vec::new();
        let mut cur = Vec::new();
        let mut buf = [0u8; 4];
        for c in text.chars() {
            let enc = c.encode_utf8(&mut buf).as_bytes();
            if cur.len() + enc.len() > EW_CHUNK {
                words.push(std::mem::take(&mut cur));
            }
            cur.extend_from_slice(enc);
        }
        if !cur.is_empty() {
            words.push(cur);
        }
        ("UTF-8", words)
    };
    words
        .iter()
        .map(|w| {
            format!(
                "=?{charset}?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An unstructured header value (Subject): `prefix` (ASCII literal, written as is) followed by
/// `text`. `text` is sanitised; it stays plain when it is printable ASCII, has no word too long
/// to fold and holds nothing a decoder could mistake for an encoded-word, else it becomes
/// encoded-words. The result is folded (LF).
pub fn unstructured(name: &str, prefix: &str, text: &str) -> String {
    let text = sanitize_header_value(text);
    let plain_ok = is_printable_ascii(&text)
        && !text.contains("=?")
        && text.split(' ').all(|w| w.len() + 1 < FOLD_AT);
    let prefix = sanitize_header_value(prefix);
    let value = if plain_ok || text.is_empty() {
        format!("{prefix}{text}")
    } else {
        format!("{prefix}{}", encoded_words(&text))
    };
    // Every token is now short (encoded-words are ≤ 75), so folding cannot fail; fall back
    // to encoding the whole value should the prefix itself be hostile.
    fold(name, &value).unwrap_or_else(|_| {
        let all = format!("{prefix}{text}");
        fold(name, &encoded_words(&all)).unwrap_or_default()
    })
}

/// A display-name phrase: a quoted-string when printable ASCII and short words, otherwise
/// encoded-words.
pub fn phrase(name: &str) -> String {
    let name = sanitize_header_value(name);
    if is_printable_ascii(&name) && !name.contains("=?") && name.split(' ').all(|w| w.len() < 60) {
        let mut q = String::with_capacity(name.len() + 2);
        q.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    } else {
        encoded_words(&name)
    }
}

/// `phrase <addr>` (or the bare addr-spec when `display` is `None`), folded.
pub fn mailbox(header: &str, display: Option<&str>, addr: &str) -> Result<String, MimeError> {
    let addr = sanitize_address(addr);
    match display {
        Some(d) => fold(header, &format!("{} <{addr}>", phrase(d))),
        None => fold(header, &addr),
    }
}

/// A structured value (address list copied from the original, ids): sanitised and folded.
pub fn structured(header: &str, value: &str) -> Result<String, MimeError> {
    let v = sanitize_header_value(value);
    let v: Vec<&str> = v.split(' ').filter(|w| !w.is_empty()).collect();
    fold(header, &v.join(" "))
}

/// RFC 5322 date-time in the instant's own offset, e.g. `Fri, 7 Nov 2014 16:52:00 +0100`.
pub fn rfc5322_date(t: &Instant) -> String {
    t.format("%a, %-d %b %Y %H:%M:%S %z").to_string()
}

/// Quoted-printable (RFC 2045 §6.7) of a text: line breaks (LF or CRLF) become hard CRLF
/// breaks, lines are soft-broken to at most 76 characters, trailing white space and every
/// byte outside printable ASCII is encoded, and `.`/`F` at line start are encoded so that no
/// line can be mistaken for an SMTP end of data or an mbox `From `.
pub fn quoted_printable(text: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(text.len() + text.len() / 8 + 8);
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) && lines.len() > 1 {
        lines.pop();
        // The text ended with a newline: keep it as a final hard break.
        for line in &lines {
            qp_line(strip_cr(line), &mut out, HEX);
            out.extend_from_slice(b"\r\n");
        }
        return out;
    }
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        qp_line(strip_cr(line), &mut out, HEX);
    }
    out
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn qp_line(line: &[u8], out: &mut Vec<u8>, hex: &[u8; 16]) {
    let from_start = line.starts_with(b"From ");
    let mut col = 0usize;
    for (i, &b) in line.iter().enumerate() {
        let last = i + 1 == line.len();
        let plain = match b {
            b'=' => false,
            b' ' | b'\t' => !last,
            33..=126 => true,
            _ => false,
        };
        // Keep room for the soft-break '=' unless this is the last character of the line.
        let limit = if last { 76 } else { 75 };
        if col + if plain { 1 } else { 3 } > limit {
            out.extend_from_slice(b"=\r\n");
            col = 0;
        }
        let at_start = col == 0 && (b == b'.' || (b == b'F' && i == 0 && from_start));
        if plain && !at_start {
            out.push(b);
            col += 1;
        } else {
            out.extend_from_slice(&[b'=', hex[(b >> 4) as usize], hex[(b & 15) as usize]]);
            col += 3;
        }
    }
}

/// Base64 of `data` in lines of 76 characters, each ended by CRLF.
pub fn base64_lines(data: &[u8]) -> Vec<u8> {
    let enc = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(enc.len() + enc.len() / 76 * 2 + 2);
    for chunk in enc.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A multipart boundary derived from the caller's random `seed` and an index (one seed gives
/// the boundaries of a whole message). 49 characters of `[A-Za-z0-9=_-]`.
pub fn boundary(seed: &[u8], index: u32) -> String {
    let mut input = Vec::with_capacity(seed.len() + 4);
    input.extend_from_slice(seed);
    input.extend_from_slice(&index.to_be_bytes());
    let digest = openssl::sha::sha256(&input);
    format!("----=_pecora_{}", hex::encode(&digest[..18]))
}

/// A boundary from `seed` that occurs nowhere in any of `contents`, starting at `index`.
/// Returns the boundary and the next free index.
pub fn boundary_avoiding(seed: &[u8], mut index: u32, contents: &[&[u8]]) -> (String, u32) {
    loop {
        let b = boundary(seed, index);
        index = index.wrapping_add(1);
        if !contents.iter().any(|c| contains(c, b.as_bytes())) {
            return (b, index);
        }
    }
}

/// Byte-string search (first-byte scan, then compare).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Position of the first occurrence of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    if hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(p) => {
                let at = i + p;
                if &hay[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// Copies `src` into `out` turning every bare LF or bare CR into CRLF (canonical form for
/// signing). Existing CRLF pairs are kept.
pub fn push_crlf_normalised(out: &mut Vec<u8>, src: &[u8]) {
    out.reserve(src.len() + src.len() / 64);
    let mut i = 0;
    while i < src.len() {
        // Copy the longest run without CR/LF at once.
        let run = src[i..].iter().position(|&b| b == b'\r' || b == b'\n');
        match run {
            None => {
                out.extend_from_slice(&src[i..]);
                return;
            }
            Some(p) => {
                out.extend_from_slice(&src[i..i + p]);
                i += p;
                if src[i] == b'\r' && src.get(i + 1) == Some(&b'\n') {
                    i += 2;
                } else {
                    i += 1;
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// The 7bit / 8bit / binary class of a body, for Content-Transfer-Encoding of composite and
/// message/rfc822 parts (RFC 2045 §2.7–2.9): `binary` when it holds NUL, a bare CR/LF or a
/// line longer than 998 octets.
pub fn transfer_class(data: &[u8]) -> &'static str {
    let mut eight = false;
    let mut col = 0usize;
    let mut prev = 0u8;
    for &b in data {
        match b {
            0 => return "binary",
            b'\n' => {
                if prev != b'\r' {
                    return "binary";
                }
                col = 0;
            }
            b'\r' => {}
            _ => {
                if prev == b'\r' {
                    return "binary";
                }
                col += 1;
                if col > MAX_LINE {
                    return "binary";
                }
                if b >= 0x80 {
                    eight = true;
                }
            }
        }
        prev = b;
    }
    if prev == b'\r' {
        return "binary";
    }
    if eight { "8bit" } else { "7bit" }
}

/// Orders transfer classes: 7bit < 8bit < binary.
pub fn wider_class(a: &'static str, b: &'static str) -> &'static str {
    let rank = |c: &str| match c {
        "7bit" => 0,
        "8bit" => 1,
        _ => 2,
    };
    if rank(a) >= rank(b) { a } else { b }
}

/// A MIME parameter `name="value"`: quoted-string when ASCII, else RFC 2231 extended form
/// `name*=UTF-8''percent-encoded`.
pub fn param(name: &str, value: &str) -> String {
    let v = sanitize_header_value(value);
    if is_printable_ascii(&v) {
        let mut q = String::with_capacity(v.len() + name.len() + 4);
        q.push_str(name);
        q.push_str("=\"");
        for c in v.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    } else {
        let mut q = format!("{name}*=UTF-8''");
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                q.push(b as char);
            } else {
                q.push_str(&format!("%{b:02X}"));
            }
        }
        q
    }
}

/// Appends `Name: value` (value LF-folded or single-line) in wire form with CRLF.
pub fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(crlf_fold(value).as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_removes_line_breaks_and_nul() {
        assert_eq!(sanitize_header_value("a\r\nBcc: x\0y"), "a  Bcc: xy");
        assert_eq!(sanitize_address("<a@b.it>\r\nX: y"), "a@b.itX:y");
    }

    #[test]
    fn fold_keeps_lines_short() {
        let v = "word ".repeat(40);
        let f = fold("Subject", v.trim()).unwrap();
        let mut first = true;
        for line in f.split('\n') {
            let len = if first { line.len() + 9 } else { line.len() };
            assert!(len <= FOLD_AT, "{line}");
            first = false;
        }
        assert_eq!(f.replace("\n", ""), v.trim());
        assert!(fold("To", &"x".repeat(1200)).is_err());
    }

    #[test]
    fn encoded_words_choose_charset_and_round_trip() {
        let w = encoded_words("perché");
        assert!(w.starts_with("=?ISO-8859-1?B?"), "{w}");
        let w = encoded_words("Привет €");
        assert!(w.starts_with("=?UTF-8?B?"), "{w}");
        let long = encoded_words(&"€".repeat(100));
        for word in long.split(' ') {
            assert!(word.len() <= 75);
            let b64 = word.trim_start_matches("=?UTF-8?B?").trim_end_matches("?=");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            assert!(
                std::str::from_utf8(&raw).is_ok(),
                "split inside a character"
            );
        }
    }

    #[test]
    fn subject_plain_or_encoded() {
        assert_eq!(
            unstructured("Subject", "CONSEGNA: ", "Test PEC"),
            "CONSEGNA: Test PEC"
        );
        let s = unstructured("Subject", "CONSEGNA: ", "caffè\r\nBcc: evil@x");
        assert!(!s.contains('\r') && s.starts_with("CONSEGNA: =?ISO-8859-1?B?"));
        let s = unstructured("Subject", "X: ", &"a".repeat(2000));
        assert!(s.split('\n').all(|l| l.len() <= FOLD_AT));
    }

    #[test]
    fn qp_encodes_and_breaks() {
        let q = quoted_printable("è stato\nx = y \n".as_bytes());
        assert_eq!(q, b"=C3=A8 stato\r\nx =3D y=20\r\n");
        let long = quoted_printable("a".repeat(200).as_bytes());
        for l in long.split(|&b| b == b'\n') {
            assert!(l.len() <= 77);
        }
        assert_eq!(quoted_printable(b".\nFrom x"), b"=2E\r\n=46rom x");
    }

    #[test]
    fn base64_lines_are_76() {
        let b = base64_lines(&[0u8; 200]);
        let lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
        assert_eq!(lines[0].len(), 77);
    }

    #[test]
    fn boundary_is_deterministic_and_avoids_content() {
        assert_eq!(boundary(b"seed", 1), boundary(b"seed", 1));
        assert_ne!(boundary(b"seed", 1), boundary(b"seed", 2));
        let b1 = boundary(b"s", 0);
        let (b, next) = boundary_avoiding(b"s", 0, &[b1.as_bytes()]);
        assert_ne!(b, b1);
        assert_eq!(next, 2);
    }

    #[test]
    fn normalise_line_endings() {
        let mut v = Vec::new();
        push_crlf_normalised(&mut v, b"a\nb\r\nc\rd");
        assert_eq!(v, b"a\r\nb\r\nc\r\nd");
        assert_eq!(transfer_class(b"a\r\nb"), "7bit");
        assert_eq!(transfer_class("è\r\n".as_bytes()), "8bit");
        assert_eq!(transfer_class(b"a\nb"), "binary");
    }

    #[test]
    fn params() {
        assert_eq!(param("name", "a\"b.txt"), "name=\"a\\\"b.txt\"");
        assert_eq!(param("filename", "è.txt"), "filename*=UTF-8''%C3%A8.txt");
    }
}
