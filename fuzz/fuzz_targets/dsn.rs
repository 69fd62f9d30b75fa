//! Fuzzes the delivery status notification reader (`pecora::pec::dsn::parse`, the bounces
//! Postfix hands to PEC-INTERNO). Besides "never panics": what it reads becomes a signed
//! errore-consegna, so each recipient's `errore-esteso` must be one line of bounded length.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(report) = pecora::pec::dsn::parse(data) else { return };
    for r in &report.recipients {
        let _ = r.failed();
        let _ = r.errore();
        let e = r.errore_esteso("Gestore di prova");
        assert!(e.chars().count() <= 900, "errore-esteso of {} chars", e.chars().count());
        assert!(!e.chars().any(char::is_control), "a control character in {e:?}");
    }
    if let Some(id) = &report.original_message_id {
        assert!(!id.starts_with('<') && !id.ends_with('>'), "brackets left on {id:?}");
    }
});
