//! Fuzzes the mail log reader of the acceptance hold (`daemon::queue_confirm`): the lines
//! that release (`qmgr`'s `from=<…>`), hold or cancel (`cleanup`'s refusals and holds) a
//! receipt, and cleanup's `message-id=` lines the outbox asks about. A syslog file is written
//! by any local user (`logger`), so every byte is hostile. Besides "never panics": a line
//! counts only with this instance's exact `<syslog_name>/qmgr[pid]` or `/cleanup[pid]` tag,
//! its queue id is a token of the line, and a Message-ID read is one bare token.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pecora::daemon::queue_confirm::{parse_line, parse_message_id};

fuzz_target!(|data: &[u8]| {
    // The follower decodes every line lossily, so any bytes reach the parsers.
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        for name in ["postfix", "postfix-pec", "postfix/submission"] {
            if let Some((id, _)) = parse_line(line, name) {
                assert!(id.len() >= 6 && id.bytes().all(|b| b.is_ascii_alphanumeric()), "queue id {id:?}");
                assert!(
                    line.contains(&format!("{name}/qmgr[")) || line.contains(&format!("{name}/cleanup[")),
                    "{line:?} counted for {name}"
                );
                assert!(line.contains(&format!("{id}:")), "{id} not in {line:?}");
            }
            if let Some((id, msgid)) = parse_message_id(line, name) {
                assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "queue id {id:?}");
                assert!(line.contains(&format!("{name}/cleanup[")), "{line:?} counted for {name}");
                assert!(!msgid.is_empty() && msgid.len() <= 998 && !msgid.contains(['<', '>', ' ']), "message-id {msgid:?}");
            }
        }
    }
});
