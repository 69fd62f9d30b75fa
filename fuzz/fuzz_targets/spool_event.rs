//! Fuzzes the delivery spool's event reader: the `key=value` files the Dovecot Lua hook
//! writes (`DeliveryEvent::parse`) and the event told by a file name
//! (`DeliveryEvent::from_file_name`). Besides "never panics": an accepted event names a user,
//! and its PEC id carries no angle brackets at either end.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pecora::delivery::DeliveryEvent;

fn check(e: &DeliveryEvent) {
    assert!(!e.user.is_empty(), "an event without a user: {e:?}");
    let id = e.pec_id();
    assert!(!id.starts_with('<') && !id.ends_with('>'), "pec_id {id:?}");
}

fuzz_target!(|data: &[u8]| {
    // Spool::read reads the file as UTF-8 (read_to_string): other bytes never get here.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(e) = DeliveryEvent::parse(text) {
        check(&e);
    }
    // A file name is one path component: the first line stands for it.
    let name = text.lines().next().unwrap_or("");
    if let Some(e) = DeliveryEvent::from_file_name(name) {
        check(&e);
        assert_eq!(e.mailbox, "INBOX");
    }
});
