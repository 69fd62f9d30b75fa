//! The "ricevuta breve" transform (pec-format.md §3.5, decisions.md 4): the original keeps its
//! MIME structure, and every part with a `name` (Content-Type) or `filename`
//! (Content-Disposition) parameter, and every `message/rfc822` part, is replaced by a
//! `text/plain` part named `<filename>.hash` whose content is the lowercase SHA-1 hex of the
//! part's *decoded* bytes (what `sha1sum` prints for the saved file).
//!
//! An `application/(x-)pkcs7-mime` original is left untouched; the signature part of a
//! `multipart/signed` original is kept (the end-to-end signature then no longer verifies,
//! as the RFC notes). Structure and byte offsets come from mail-parser; everything outside the
//! replaced parts is copied byte for byte. Malformed MIME never panics: at worst fewer parts
//! are replaced.

use base64::Engine as _;
use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::mime;

/// File name used for a `message/rfc822` part that has no name of its own.
pub const UNNAMED_MESSAGE: &str = "messaggio.eml";

/// The brief form of `original` (a complete RFC 5322 message).
pub fn transform(original: &[u8]) -> Vec<u8> {
    let Some(parsed) = MessageParser::default().parse(original) else {
        return original.to_vec();
    };
    if parsed.parts.first().is_some_and(is_pkcs7_mime) {
        return original.to_vec();
    }
    let mut reps: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for part in &parsed.parts {
        if matches!(part.body, PartType::Multipart(_)) {
            continue;
        }
        let ct = part.content_type();
        let ctype = ct
            .map(|c| c.ctype().to_ascii_lowercase())
            .unwrap_or_default();
        let subtype = ct
            .and_then(|c| c.subtype())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if ctype == "application"
            && (subtype == "pkcs7-signature" || subtype == "x-pkcs7-signature")
        {
            continue;
        }
        let is_message = matches!(part.body, PartType::Message(_))
            || (ctype == "message" && subtype == "rfc822");
        let name = ct
            .and_then(|c| c.attribute("name"))
            .or_else(|| {
                part.content_disposition()
                    .and_then(|d| d.attribute("filename"))
            })
            .map(str::to_string);
        let name = match (name, is_message) {
            (Some(n), _) => n,
            (None, true) => UNNAMED_MESSAGE.to_string(),
            (None, false) => continue,
        };
        let (start, body, end) = (
            part.offset_header as usize,
            part.offset_body as usize,
            part.offset_end as usize,
        );
        if !(start <= body && body <= end && end <= original.len()) {
            continue;
        }
        let raw_body = &original[body..end];
        let cte = header_value(&original[start..body], "content-transfer-encoding")
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let decoded = decode(raw_body, &cte);
        let hash = hex::encode(openssl::sha::sha1(&decoded));
        let disposition = part
            .content_disposition()
            .map(|d| d.ctype().to_ascii_lowercase())
            .filter(|d| d == "inline" || d == "attachment")
            .unwrap_or_else(|| "attachment".to_string());
        let mut new = strip_content_headers(&original[start..body]);
        let hash_name = format!("{}.hash", mime::sanitize_header_value(&name));
        new.extend_from_slice(
            format!(
                "Content-Type: text/plain; charset=\"us-ascii\"; {}\r\n\
Content-Disposition: {disposition}; {}\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{hash}",
                mime::param("name", &hash_name),
                mime::param("filename", &hash_name),
            )
            .as_bytes(),
        );
        // Keep the line break that ended the original body inside the part, if any.
        if raw_body.ends_with(b"\n") {
            new.extend_from_slice(b"\r\n");
        }
        reps.push((start, end, new));
    }
    reps.sort_by_key(|r| r.0);
    let mut out = Vec::with_capacity(original.len());
    let mut at = 0usize;
    for (start, end, new) in reps {
        if start < at {
            continue; // overlapping (nested) replacement: the outer one already covers it
        }
        out.extend_from_slice(&original[at..start]);
        out.extend_from_slice(&new);
        at = end;
    }
    out.extend_from_slice(&original[at..]);
    out
}

fn is_pkcs7_mime(part: &mail_parser::MessagePart<'_>) -> bool {
    part.content_type().is_some_and(|c| {
        c.ctype().eq_ignore_ascii_case("application")
            && c.subtype().is_some_and(|s| {
                s.eq_ignore_ascii_case("pkcs7-mime") || s.eq_ignore_ascii_case("x-pkcs7-mime")
            })
    })
}

/// Splits a raw header block into fields (each with its continuation lines).
fn fields(block: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    while i < block.len() {
        if block[i] == b'\n' {
            let next = block.get(i + 1).copied();
            if !matches!(next, Some(b' ') | Some(b'\t')) {
                out.push(&block[start..=i]);
                start = i + 1;
            }
        }
        i += 1;
    }
    if start < block.len() {
        out.push(&block[start..]);
    }
    out
}

fn field_name(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    trim_ascii(&field[..end])
}

fn trim_ascii(s: &[u8]) -> &[u8] {
    let a = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let z = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(a, |p| p + 1);
    &s[a..z]
}

/// The unfolded value of the first header `name` (case-insensitive) in a raw header block.
pub fn header_value(block: &[u8], name: &str) -> Option<String> {
    fields(block)
        .into_iter()
        .find(|f| field_name(f).eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| {
            let colon = f.iter().position(|&b| b == b':').map_or(f.len(), |p| p + 1);
            let v: Vec<u8> = f[colon..]
                .iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                .collect();
            String::from_utf8_lossy(trim_ascii(&v)).into_owned()
        })
}

/// The header block without Content-Type / -Transfer-Encoding / -Disposition / -Length and
/// without its terminating blank line; other fields are kept byte for byte.
fn strip_content_headers(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len());
    for f in fields(block) {
        let n = field_name(f);
        if n.is_empty() && trim_ascii(f).is_empty() {
            continue; // the blank separator line
        }
        if [
            &b"content-type"[..],
            b"content-transfer-encoding",
            b"content-disposition",
            b"content-length",
        ]
        .iter()
        .any(|h| n.eq_ignore_ascii_case(h))
        {
            continue;
        }
        out.extend_from_slice(f);
        if !f.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Decodes a part body per its Content-Transfer-Encoding; unknown encodings are identity.
pub fn decode(raw: &[u8], cte: &str) -> Vec<u8> {
    match cte {
        "base64" => {
            let clean: Vec<u8> = raw
                .iter()
                .copied()
                .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
                .collect();
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
                    .with_decode_allow_trailing_bits(true),
            );
            // A length of 4n+1 cannot be valid base64: drop the stray character.
            let usable = if clean.len() % 4 == 1 {
                &clean[..clean.len() - 1]
            } else {
                &clean[..]
            };
            engine.decode(usable).unwrap_or_default()
        }
        "quoted-printable" => decode_qp(raw),
        _ => raw.to_vec(),
    }
}

/// Quoted-printable decoding (RFC 2045 §6.7), lenient: invalid escapes are kept literally,
/// line breaks become CRLF, trailing white space of each line is dropped.
pub fn decode_qp(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let lines: Vec<&[u8]> = raw.split(|&b| b == b'\n').collect();
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut end = line.len();
        while end > 0 && (line[end - 1] == b' ' || line[end - 1] == b'\t') {
            end -= 1;
        }
        let line = &line[..end];
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        let mut j = 0;
        while j < line.len() {
            if line[j] == b'=' && j + 2 < line.len() {
                if let (Some(h), Some(l)) = (hexval(line[j + 1]), hexval(line[j + 2])) {
                    out.push(h << 4 | l);
                    j += 3;
                    continue;
                }
            }
            out.push(line[j]);
            j += 1;
        }
        if !soft && i + 1 < n {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

fn hexval(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &str = "From: a@pec.a.it\r\nTo: b@pec.b.it\r\nSubject: t\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\n\
Content-Type: text/plain; charset=\"iso-8859-1\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
Caff=E8\r\n--XX\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\n\
Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a.bin\"\r\nContent-ID: <c1>\r\n\r\n\
aGVsbG8gd29y\r\nbGQ=\r\n--XX\r\nContent-Type: text/plain; name=\"n.txt\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
x=3Dy=\r\nz\r\n--XX--\r\nepilogue\r\n";

    #[test]
    fn replaces_named_parts_with_sha1_of_decoded_bytes() {
        let out = String::from_utf8(transform(MSG.as_bytes())).unwrap();
        let hello = hex::encode(openssl::sha::sha1(b"hello world"));
        let xyz = hex::encode(openssl::sha::sha1(b"x=yz"));
        assert!(out.contains(&format!("Content-ID: <c1>\r\nContent-Type: text/plain; charset=\"us-ascii\"; name=\"a.bin.hash\"\r\nContent-Disposition: attachment; filename=\"a.bin.hash\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{hello}\r\n--XX")), "{out}");
        assert!(out.contains("name=\"n.txt.hash\""));
        assert!(out.contains(&xyz), "{out}");
        assert!(
            out.contains("Caff=E8\r\n--XX\r\n"),
            "unnamed part kept: {out}"
        );
        assert!(out.starts_with("From: a@pec.a.it\r\n") && out.ends_with("--XX--\r\nepilogue\r\n"));
        assert!(!out.contains("aGVsbG8"));
    }

    #[test]
    fn rfc822_parts_are_replaced_whole() {
        let inner = "Subject: inner\r\n\r\nbody\r\n";
        let m = format!(
            "Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n{inner}--B--\r\n"
        );
        let out = String::from_utf8(transform(m.as_bytes())).unwrap();
        assert!(out.contains("messaggio.eml.hash"), "{out}");
        assert!(!out.contains("Subject: inner"));
        let body_hash = hex::encode(openssl::sha::sha1(
            inner.trim_end_matches("\r\n").as_bytes(),
        ));
        let with_crlf = hex::encode(openssl::sha::sha1(inner.as_bytes()));
        assert!(
            out.contains(&body_hash) || out.contains(&with_crlf),
            "{out}"
        );
    }

    #[test]
    fn pkcs7_mime_and_garbage_untouched() {
        let m = b"Content-Type: application/pkcs7-mime; name=\"smime.p7m\"\r\n\r\nMIIB\r\n";
        assert_eq!(transform(m), m.to_vec());
        for g in [
            &b""[..],
            b"\r\n\r\n--",
            b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n--",
        ] {
            let _ = transform(g);
        }
    }

    #[test]
    fn qp_and_base64_decoding() {
        assert_eq!(decode_qp(b"a=3D=\r\nb\r\nc"), b"a=b\r\nc");
        assert_eq!(decode(b"aGk=\r\n", "base64"), b"hi");
        assert_eq!(decode(b"aGk\r\n", "base64"), b"hi");
    }
}
