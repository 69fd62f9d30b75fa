//! Replacing the whole message through milter actions: the busta di trasporto or the busta
//! di anomalia takes the place of what the client sent.
//!
//! Postfix applies header edits relative to the headers it showed the milter, so every
//! original header is deleted by name and occurrence, highest occurrence first. `Received:`
//! headers are the trace of the path and stay where they are (the envelope inherits them,
//! pec-format.md §1.4). All header edits come before the single body replacement: Postfix
//! refuses header edits after REPLBODY packets.

use std::collections::HashMap;

use indymilter::{ActionError, ContextActions};

/// Header values go to Postfix with LF folding, never CR.
fn milter_value(v: &str) -> String {
    v.replace("\r\n", "\n").replace('\r', "")
}

/// Deletes the original headers (but `Received:`), adds `new_headers` in order, then
/// replaces the body with the concatenation of `new_body`'s pieces. Header values may be
/// folded with CRLF or LF.
pub async fn replace_message(
    actions: &impl ContextActions,
    original: &[(String, Vec<u8>)],
    new_headers: &[(String, String)],
    new_body: &[impl AsRef<[u8]>],
) -> Result<(), ActionError> {
    let mut seen: HashMap<String, i32> = HashMap::new();
    let deletions: Vec<(&str, i32)> = original
        .iter()
        .map(|(name, _)| {
            let n = seen.entry(name.to_ascii_lowercase()).or_insert(0);
            *n += 1;
            (name.as_str(), *n)
        })
        .filter(|(name, _)| !name.eq_ignore_ascii_case("Received"))
        .collect();
    for (name, index) in deletions.into_iter().rev() {
        actions.change_header(name, index, None::<&str>).await?;
    }
    for (name, value) in new_headers {
        if name.eq_ignore_ascii_case("Received") {
            continue;
        }
        // Postfix wants the value as it follows "Name:", leading space included.
        let value = milter_value(value);
        let value = if value.starts_with([' ', '\t']) { value } else { format!(" {value}") };
        actions.add_header(name.as_str(), value).await?;
    }
    // The body goes in its pieces (an embedded message is sent from where it lies, never
    // joined first); Postfix appends each replacement packet to the previous ones.
    let mut sent = false;
    for piece in new_body.iter().map(AsRef::as_ref).filter(|p| !p.is_empty()) {
        actions.replace_body(piece).await?;
        sent = true;
    }
    if !sent {
        actions.replace_body(b"").await?;
    }
    Ok(())
}
