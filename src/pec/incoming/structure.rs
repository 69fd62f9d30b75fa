//! One reading of the MIME structure (issue 13 item 10): pecora, Dovecot and a mail client
//! must see the same parts in a PEC message. MIME parsers disagree on exactly the
//! constructs below (which of two `boundary` parameters counts, whether RFC 2231
//! continuations are joined, whether `Name :` is a header field, which of two Content-Type
//! fields applies), so a signed message that carries any of them in its own structure is
//! refused rather than read one way here and another way in the mailbox.
//!
//! The walk covers the outer header and every entity of the multipart tree down from it
//! (the signed content, its parts, the signature part). It does not open an attached
//! message (`message/rfc822`, the postacert.eml): that is the sender's original, shown as an
//! attachment, and pecora takes no fact from its structure. Pure; never panics on garbage.

use super::smime::{content_type, header_fields, header_values, multipart_ranges, split_header};

/// Deeper than any real provider's message (multipart/signed > mixed > alternative).
const MAX_DEPTH: usize = 8;

/// Header fields that must appear at most once in each entity; the parameters of the first
/// two must be unambiguous (no duplicates, no RFC 2231 continuations `name*0`, no extended
/// `name*` beside a plain `name`).
const MIME_FIELDS: [&str; 3] = ["Content-Type", "Content-Disposition", "Content-Transfer-Encoding"];

/// The first ambiguity in the MIME structure of `raw`, described with the entity where it
/// is (`message`, `message.1`, `message.1.2`…), or None when there is one reading only.
pub fn ambiguity(raw: &[u8]) -> Option<String> {
    walk(raw, "message", 0)
}

fn walk(entity: &[u8], path: &str, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return Some(format!("{path}: MIME parts nested deeper than {MAX_DEPTH} levels"));
    }
    let (head, body_at) = split_header(entity);
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_none_or(|b| *b == b' ' || *b == b'\t') {
            continue;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && line[..colon].last().is_some_and(|b| *b == b' ' || *b == b'\t')
        {
            let name = String::from_utf8_lossy(&line[..colon]);
            return Some(format!("{path}: the header name {:?} has white space before the colon", name.trim_end()));
        }
    }
    let fields = header_fields(head);
    for field in MIME_FIELDS {
        let values = header_values(&fields, field);
        if values.len() > 1 {
            return Some(format!("{path}: {} {field} fields", values.len()));
        }
        let Some(value) = values.first() else { continue };
        if field == "Content-Transfer-Encoding" {
            continue;
        }
        let (_, params) = content_type(value);
        for (i, (name, _)) in params.iter().enumerate() {
            if let Some((base, rest)) = name.split_once('*') {
                if rest.starts_with(|c: char| c.is_ascii_digit()) {
                    return Some(format!("{path}: the {field} parameter {name} is an RFC 2231 continuation"));
                }
                if params.iter().any(|(n, _)| n == base) {
                    return Some(format!("{path}: {field} has both {base} and the RFC 2231 {name}"));
                }
            }
            if params[..i].iter().any(|(n, _)| n == name) {
                let n = params.iter().filter(|(n, _)| n == name).count();
                return Some(format!("{path}: {n} {name} parameters in {field}"));
            }
        }
    }
    let (mime, params) = content_type(header_values(&fields, "Content-Type").first().copied().unwrap_or(""));
    if !mime.starts_with("multipart/") {
        return None;
    }
    let Some(boundary) = params.iter().find(|(n, _)| n == "boundary").map(|(_, v)| v.as_str()).filter(|b| !b.is_empty()) else {
        return Some(format!("{path}: {mime} without a boundary"));
    };
    let body = &entity[body_at.min(entity.len())..];
    for (i, range) in multipart_ranges(body, boundary).into_iter().enumerate() {
        if let Some(found) = walk(&body[range], &format!("{path}.{}", i + 1), depth + 1) {
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = "From: a@b\r\nContent-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n\
        --mix\r\nContent-Type: text/plain; charset=\"iso-8859-1\"\r\n\r\nciao\r\n\
        --mix\r\nContent-Type: application/xml; name=\"daticert.xml\"\r\nContent-Disposition: inline; filename=\"daticert.xml\"\r\n\r\n<x/>\r\n\
        --mix\r\nContent-Type: message/rfc822; name=\"postacert.eml\"\r\n\r\n\
        Subject : anything goes inside the original\r\nContent-Type: text/plain; name*0=\"a\"; name*1=\"b\"\r\n\r\nx\r\n\
        --mix--\r\n";

    fn edit(old: &str, new: &str) -> Vec<u8> {
        assert!(PLAIN.contains(old), "{old}");
        PLAIN.replacen(old, new, 1).into_bytes()
    }

    #[test]
    fn one_reading_passes_and_the_attached_original_is_not_opened() {
        assert_eq!(ambiguity(PLAIN.as_bytes()), None);
        assert_eq!(ambiguity(b""), None);
        assert_eq!(ambiguity(b"\r\n\r\n--"), None);
    }

    #[test]
    fn each_ambiguity_is_named_with_its_place() {
        let two_boundaries = edit("boundary=\"mix\"", "boundary=\"mix\"; boundary=\"other\"");
        let found = ambiguity(&two_boundaries).unwrap();
        assert!(found.starts_with("message: 2 boundary parameters"), "{found}");

        let continued = edit("name=\"daticert.xml\"", "name*0=\"dati\"; name*1=\"cert.xml\"");
        let found = ambiguity(&continued).unwrap();
        assert!(found.contains("message.2") && found.contains("name*0") && found.contains("RFC 2231"), "{found}");

        let encoded = edit("filename=\"daticert.xml\"", "filename*1*=utf-8''daticert.xml");
        assert!(ambiguity(&encoded).unwrap().contains("filename*1*"));
        // An extended value alone has one reading; beside a plain one, two.
        let extended = edit("filename=\"daticert.xml\"", "filename*=utf-8''daticert.xml");
        assert_eq!(ambiguity(&extended), None);
        let both = edit("filename=\"daticert.xml\"", "filename=\"a.xml\"; filename*=utf-8''daticert.xml");
        assert!(ambiguity(&both).unwrap().contains("both filename and the RFC 2231 filename*"));

        let spaced = edit("Content-Type: text/plain;", "Content-Type : text/plain;");
        let found = ambiguity(&spaced).unwrap();
        assert!(found.contains("message.1") && found.contains("\"Content-Type\"") && found.contains("before the colon"), "{found}");
        let outer = edit("From: a@b", "From\t: a@b");
        assert!(ambiguity(&outer).unwrap().starts_with("message: the header name \"From\""));

        let two_types = edit("Content-Type: application/xml;", "Content-Type: text/plain\r\nContent-Type: application/xml;");
        assert_eq!(ambiguity(&two_types).unwrap(), "message.2: 2 Content-Type fields");
        let two_dispositions = edit("Content-Disposition: inline;", "Content-Disposition: attachment\r\nContent-Disposition: inline;");
        assert_eq!(ambiguity(&two_dispositions).unwrap(), "message.2: 2 Content-Disposition fields");

        let no_boundary = edit("; boundary=\"mix\"", "");
        assert_eq!(ambiguity(&no_boundary).unwrap(), "message: multipart/mixed without a boundary");
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed_forever() {
        let mut raw = String::from("x");
        for i in 0..20 {
            raw = format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n{raw}\r\n--b{i}--\r\n");
        }
        assert!(ambiguity(raw.as_bytes()).unwrap().contains("deeper than"));
    }
}
