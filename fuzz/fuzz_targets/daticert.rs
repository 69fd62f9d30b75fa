//! Fuzzes the daticert.xml parser (`Daticert::parse`, pec-format.md §3). Besides "never
//! panics": a daticert the parser accepts must survive pecora's own writer. Its facts go into
//! the daticert of the receipts pecora signs (identificativo, oggetto, mittente...), so
//! `to_xml` of what was read must parse again, and writing that back must give the same
//! text (the writer's deliberate normalisation, TAB/CR/LF to spaces and dropped control
//! characters, settles after one pass).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pecora::pec::Daticert;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = Daticert::parse(data) else { return };
    let xml = d.to_xml();
    let again = Daticert::parse(xml.as_bytes())
        .unwrap_or_else(|e| panic!("pecora's own daticert.xml of {d:?} does not parse: {e}\n{xml}"));
    assert_eq!(again.tipo, d.tipo);
    assert_eq!(again.errore, d.errore);
    assert_eq!(again.data, d.data, "the date changed through to_xml");
    assert_eq!(again.destinatari.len(), d.destinatari.len());
    assert_eq!(again.to_xml(), xml, "to_xml is not a fixed point");
});
