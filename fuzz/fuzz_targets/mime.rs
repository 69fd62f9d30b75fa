//! Fuzzes the raw MIME helpers the verifier and the access point read untrusted mail with:
//! `split_header`, `header_fields`, `content_type`, `multipart_ranges`, `canonical_crlf` and
//! `split_signed` (src/pec/incoming/smime.rs), and `access::read_headers` /
//! `access::check_message` (src/pec/access.rs). Besides "never panics", each helper's
//! contract: offsets and ranges lie inside the input, in order and without overlap; header
//! names are non-empty and without blanks; the CRLF form has no bare LF; the signed content
//! split off is a piece of the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pecora::pec::access::{self, Limits, Submission};
use pecora::pec::incoming::smime;

fn inside(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

fuzz_target!(|data: &[u8]| {
    let (head, body_at) = smime::split_header(data);
    assert!(body_at <= data.len() && head.len() <= body_at);
    assert!(inside(data, head));
    let body = &data[body_at..];

    let fields = smime::header_fields(head);
    for (name, _) in &fields {
        assert!(!name.is_empty() && !name.contains([' ', ':']), "header name {name:?}");
    }
    let ct = smime::header_value(&fields, "Content-Type").unwrap_or("");
    let (mime, params) = smime::content_type(ct);
    assert_eq!(mime, mime.to_ascii_lowercase());
    let boundary = params
        .iter()
        .find(|(n, _)| n == "boundary")
        .map(|(_, v)| v.as_str())
        .unwrap_or("b");
    let ranges = smime::multipart_ranges(body, boundary);
    let mut last = 0;
    for r in &ranges {
        assert!(r.start >= last && r.start <= r.end && r.end <= body.len(), "{ranges:?} in {}", body.len());
        last = r.end;
    }

    let crlf = smime::canonical_crlf(data);
    assert!(
        crlf.iter().enumerate().all(|(i, &b)| b != b'\n' || (i > 0 && crlf[i - 1] == b'\r')),
        "a bare LF left by canonical_crlf"
    );

    if let Ok(parts) = smime::split_signed(data) {
        assert!(inside(data, parts.content));
    }

    // The access point sees the header block of a submission.
    let headers = access::read_headers(head);
    let from = headers.as_ref().map(|h| h.from.clone()).unwrap_or_default();
    let rcpts: Vec<String> = headers.iter().flat_map(|h| h.to.iter().chain(&h.cc).cloned()).collect();
    let submission = Submission {
        login: Some(if from.is_empty() { "mario.rossi@pec.alpha.test" } else { &from }),
        mail_from: if from.is_empty() { "mario.rossi@pec.alpha.test" } else { &from },
        rcpts: &rcpts,
        header_block: head,
        size: data.len() as u64,
    };
    let limits = Limits { max_recipients: 50, max_size_times_recipients: 30 * 1024 * 1024 };
    if let Ok(h) = access::check_message(&submission, limits) {
        assert_eq!(Some(&h), headers.as_ref(), "check_message read other headers than read_headers");
    }
});
