//! Reading daticert.xml (pec-format.md §3): tolerant of layout (whitespace, pretty
//! printing, attribute order, an XML prolog or none), strict on the DTD: unknown `tipo`,
//! `errore`, `destinatari tipo` or `ricevuta tipo` values, missing required elements,
//! unexpected elements and malformed dates are errors with a precise message.
//!
//! roxmltree builds a checked tree: well-formedness and nesting limits come for free. A
//! DOCTYPE is refused (real files carry none, pec-format.md §3.2), so no entity can expand.

use crate::pec::daticert::Daticert;
use crate::pec::types::{Errore, ReceiptType, Recipient, RecipientType, Tipo};

/// Why a daticert.xml was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaticertError {
    #[error("daticert.xml is not UTF-8")]
    NotUtf8,
    #[error("daticert.xml is not well-formed XML: {0}")]
    Xml(String),
    #[error("the root element is <{0}>, not <postacert>")]
    WrongRoot(String),
    #[error("<{element}> lacks the required attribute {attribute:?}")]
    MissingAttribute {
        element: &'static str,
        attribute: &'static str,
    },
    #[error("<{element} {attribute}=\"{value}\">: {value:?} is not a value the DTD allows")]
    BadValue {
        element: &'static str,
        attribute: &'static str,
        value: String,
    },
    #[error("<{parent}> lacks the required element <{element}>")]
    MissingElement {
        parent: &'static str,
        element: &'static str,
    },
    #[error("<{parent}> holds <{element}> more than once")]
    Duplicate {
        parent: &'static str,
        element: &'static str,
    },
    #[error("<{parent}> holds an element the DTD does not allow: <{element}>")]
    UnexpectedElement {
        parent: &'static str,
        element: String,
    },
    #[error("<{element}> is empty")]
    Empty { element: &'static str },
    #[error("bad date: giorno {giorno:?}, ora {ora:?}, zona {zona:?}")]
    BadDate {
        giorno: String,
        ora: String,
        zona: String,
    },
}

type Node<'a, 'i> = roxmltree::Node<'a, 'i>;

fn elements<'a, 'i>(parent: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    parent.children().filter(|n| n.is_element())
}

/// Checks that `parent` holds only elements from `allowed`.
fn only(parent: Node<'_, '_>, pname: &'static str, allowed: &[&str]) -> Result<(), DaticertError> {
    for n in elements(parent) {
        let name = n.tag_name().name();
        if !allowed.contains(&name) || n.tag_name().namespace().is_some() {
            return Err(DaticertError::UnexpectedElement {
                parent: pname,
                element: name.to_string(),
            });
        }
    }
    Ok(())
}

/// The one optional child named `name`.
fn opt<'a, 'i>(
    parent: Node<'a, 'i>,
    pname: &'static str,
    name: &'static str,
) -> Result<Option<Node<'a, 'i>>, DaticertError> {
    let mut it = elements(parent).filter(|n| n.has_tag_name(name));
    let first = it.next();
    if it.next().is_some() {
        return Err(DaticertError::Duplicate {
            parent: pname,
            element: name,
        });
    }
    Ok(first)
}

/// The one required child named `name`.
fn req<'a, 'i>(
    parent: Node<'a, 'i>,
    pname: &'static str,
    name: &'static str,
) -> Result<Node<'a, 'i>, DaticertError> {
    opt(parent, pname, name)?.ok_or(DaticertError::MissingElement {
        parent: pname,
        element: name,
    })
}

/// The element's text (all text descendants), trimmed.
fn text(n: Node<'_, '_>) -> String {
    let mut s = String::new();
    for d in n.descendants().filter(|d| d.is_text()) {
        s.push_str(d.text().unwrap_or(""));
    }
    s.trim().to_string()
}

fn nonempty(n: Node<'_, '_>, name: &'static str) -> Result<String, DaticertError> {
    let t = text(n);
    if t.is_empty() {
        Err(DaticertError::Empty { element: name })
    } else {
        Ok(t)
    }
}

/// Parses daticert.xml bytes.
pub fn parse(xml: &[u8]) -> Result<Daticert, DaticertError> {
    let xml = xml.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(xml);
    let text_doc = std::str::from_utf8(xml).map_err(|_| DaticertError::NotUtf8)?;
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text_doc, opts)
        .map_err(|e| DaticertError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "postacert" || root.tag_name().namespace().is_some() {
        return Err(DaticertError::WrongRoot(root.tag_name().name().to_string()));
    }
    let tipo_s = root
        .attribute("tipo")
        .ok_or(DaticertError::MissingAttribute {
            element: "postacert",
            attribute: "tipo",
        })?;
    let tipo = exact(Tipo::parse(tipo_s).map(|t| (t, t.as_str())), tipo_s).ok_or_else(|| {
        DaticertError::BadValue {
            element: "postacert",
            attribute: "tipo",
            value: tipo_s.to_string(),
        }
    })?;
    let errore = match root.attribute("errore") {
        Some(e) => exact(Errore::parse(e).map(|x| (x, x.as_str())), e).ok_or_else(|| {
            DaticertError::BadValue {
                element: "postacert",
                attribute: "errore",
                value: e.to_string(),
            }
        })?,
        None => Errore::Nessuno,
    };
    only(root, "postacert", &["intestazione", "dati"])?;
    let int = req(root, "postacert", "intestazione")?;
    let dati = req(root, "postacert", "dati")?;

    only(
        int,
        "intestazione",
        &["mittente", "destinatari", "risposte", "oggetto"],
    )?;
    let mittente = nonempty(req(int, "intestazione", "mittente")?, "mittente")?;
    let mut destinatari = Vec::new();
    for d in elements(int).filter(|n| n.has_tag_name("destinatari")) {
        let kind = match d.attribute("tipo") {
            Some(t) => {
                exact(RecipientType::parse(t).map(|x| (x, x.as_str())), t).ok_or_else(|| {
                    DaticertError::BadValue {
                        element: "destinatari",
                        attribute: "tipo",
                        value: t.to_string(),
                    }
                })?
            }
            None => RecipientType::Certificato,
        };
        destinatari.push(Recipient {
            address: nonempty(d, "destinatari")?,
            kind,
        });
    }
    if destinatari.is_empty() {
        return Err(DaticertError::MissingElement {
            parent: "intestazione",
            element: "destinatari",
        });
    }
    let risposte = text(req(int, "intestazione", "risposte")?);
    let oggetto = opt(int, "intestazione", "oggetto")?.map(text);

    only(
        dati,
        "dati",
        &[
            "gestore-emittente",
            "data",
            "identificativo",
            "msgid",
            "ricevuta",
            "consegna",
            "ricezione",
            "errore-esteso",
        ],
    )?;
    let gestore_emittente = nonempty(req(dati, "dati", "gestore-emittente")?, "gestore-emittente")?;
    let data = req(dati, "dati", "data")?;
    only(data, "data", &["giorno", "ora"])?;
    let zona = data
        .attribute("zona")
        .ok_or(DaticertError::MissingAttribute {
            element: "data",
            attribute: "zona",
        })?
        .trim();
    let giorno = text(req(data, "data", "giorno")?);
    let ora = text(req(data, "data", "ora")?);
    let bad_date = || DaticertError::BadDate {
        giorno: giorno.clone(),
        ora: ora.clone(),
        zona: zona.to_string(),
    };
    let zona_ok = zona.len() == 5
        && (zona.starts_with('+') || zona.starts_with('-'))
        && zona[1..].bytes().all(|b| b.is_ascii_digit());
    // dd/mm/yyyy (pec-format.md §3): chrono's %Y alone would read "31/07/25" as the year 25.
    let year_ok = giorno
        .rsplit('/')
        .next()
        .is_some_and(|y| y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()));
    if !zona_ok || !year_ok {
        return Err(bad_date());
    }
    let instant =
        chrono::DateTime::parse_from_str(&format!("{giorno} {ora} {zona}"), "%d/%m/%Y %H:%M:%S %z")
            .map_err(|_| bad_date())?;
    let identificativo = nonempty(req(dati, "dati", "identificativo")?, "identificativo")?;
    // An identifier is what lies between its angle brackets (Daticert::to_xml writes it
    // without them): `<>` alone identifies nothing (found by fuzzing: the receipt pecora
    // would write from it had an empty <identificativo>, which no reader accepts).
    if identificativo.trim_matches(['<', '>']).trim().is_empty() {
        return Err(DaticertError::Empty {
            element: "identificativo",
        });
    }
    let msgid = opt(dati, "dati", "msgid")?.map(text);
    let ricevuta = match opt(dati, "dati", "ricevuta")? {
        Some(r) => {
            let t = r.attribute("tipo").ok_or(DaticertError::MissingAttribute {
                element: "ricevuta",
                attribute: "tipo",
            })?;
            Some(
                exact(ReceiptType::parse(t).map(|x| (x, x.as_str())), t).ok_or_else(|| {
                    DaticertError::BadValue {
                        element: "ricevuta",
                        attribute: "tipo",
                        value: t.to_string(),
                    }
                })?,
            )
        }
        None => None,
    };
    let consegna = match opt(dati, "dati", "consegna")? {
        Some(n) => Some(nonempty(n, "consegna")?),
        None => None,
    };
    let ricezione = elements(dati)
        .filter(|n| n.has_tag_name("ricezione"))
        .map(|n| nonempty(n, "ricezione"))
        .collect::<Result<Vec<_>, _>>()?;
    let errore_esteso = opt(dati, "dati", "errore-esteso")?.map(text);
    Ok(Daticert {
        tipo,
        errore,
        mittente,
        destinatari,
        risposte,
        oggetto,
        gestore_emittente,
        data: instant,
        identificativo,
        msgid,
        ricevuta,
        consegna,
        ricezione,
        errore_esteso,
    })
}

/// DTD enumerations are case-sensitive: accept only the exact literal (surrounding
/// whitespace aside, which XML attribute normalisation tolerates).
fn exact<T>(parsed: Option<(T, &'static str)>, raw: &str) -> Option<T> {
    parsed.filter(|(_, lit)| *lit == raw.trim()).map(|(t, _)| t)
}

impl Daticert {
    /// Parses daticert.xml (pec-format.md §3): tolerant of layout, strict on the DTD.
    pub fn parse(xml: &[u8]) -> Result<Daticert, DaticertError> {
        parse(xml)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACC: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<postacert tipo="accettazione" errore="nessuno">
    <intestazione>
        <mittente>l.battistini@pec.it</mittente>
        <destinatari tipo="certificato">thinkstudio@pec.it</destinatari>
        <risposte>l.battistini@pec.it</risposte>
        <oggetto>test private</oggetto>
    </intestazione>
    <dati>
        <gestore-emittente>ARUBA PEC S.p.A.</gestore-emittente>
        <data zona="+0100">
            <giorno>14/11/2014</giorno>
            <ora>18:26:32</ora>
        </data>
        <identificativo>opec275.20141114182632.23219.07.1.48@pec.aruba.it</identificativo>
        <msgid>&lt;1415985992@elbati&gt;</msgid>
    </dati>
</postacert>
"#;

    #[test]
    fn parses_a_real_layout() {
        let d = parse(ACC.as_bytes()).unwrap();
        assert_eq!(d.tipo, Tipo::Accettazione);
        assert_eq!(d.errore, Errore::Nessuno);
        assert_eq!(d.mittente, "l.battistini@pec.it");
        assert_eq!(
            d.destinatari,
            vec![Recipient {
                address: "thinkstudio@pec.it".into(),
                kind: RecipientType::Certificato
            }]
        );
        assert_eq!(d.msgid.as_deref(), Some("<1415985992@elbati>"));
        assert_eq!(d.data.to_rfc3339(), "2014-11-14T18:26:32+01:00");
        assert_eq!(d.oggetto.as_deref(), Some("test private"));
        assert_eq!(d.ricevuta, None);
    }

    #[test]
    fn tolerates_layout_and_attribute_order() {
        let compact = ACC.replace("\n", "").replace("    ", "").replace(
            "tipo=\"accettazione\" errore=\"nessuno\"",
            "errore='nessuno'  tipo='accettazione'",
        );
        assert_eq!(
            parse(compact.as_bytes()).unwrap(),
            parse(ACC.as_bytes()).unwrap()
        );
        let no_prolog = ACC.replace("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n", "");
        assert!(parse(no_prolog.as_bytes()).is_ok());
    }

    #[test]
    fn strict_on_dtd_values() {
        let e = parse(
            ACC.replace("tipo=\"accettazione\"", "tipo=\"mancata-consegna\"")
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            DaticertError::BadValue {
                element: "postacert",
                attribute: "tipo",
                value: "mancata-consegna".into()
            }
        );
        assert!(e.to_string().contains("mancata-consegna"));
        let e = parse(
            ACC.replace("errore=\"nessuno\"", "errore=\"boh\"")
                .as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            DaticertError::BadValue {
                attribute: "errore",
                ..
            }
        ));
        let e = parse(
            ACC.replace("tipo=\"certificato\"", "tipo=\"Certificato\"")
                .as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            DaticertError::BadValue {
                element: "destinatari",
                ..
            }
        ));
        let e = parse(
            ACC.replace("</msgid>", "</msgid><ricevuta tipo=\"lunga\"/>")
                .as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            DaticertError::BadValue {
                element: "ricevuta",
                ..
            }
        ));
    }

    #[test]
    fn requires_required_elements() {
        let cases = [
            (
                "<identificativo>opec275.20141114182632.23219.07.1.48@pec.aruba.it</identificativo>",
                "identificativo",
            ),
            (
                "<gestore-emittente>ARUBA PEC S.p.A.</gestore-emittente>",
                "gestore-emittente",
            ),
            ("<mittente>l.battistini@pec.it</mittente>", "mittente"),
            (
                "<destinatari tipo=\"certificato\">thinkstudio@pec.it</destinatari>",
                "destinatari",
            ),
            ("<risposte>l.battistini@pec.it</risposte>", "risposte"),
        ];
        for (cut, el) in cases {
            match parse(ACC.replace(cut, "").as_bytes()) {
                Err(DaticertError::MissingElement { element, .. }) => assert_eq!(element, el),
                other => panic!("{el}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(ACC.replace(" zona=\"+0100\"", "").as_bytes()),
            Err(DaticertError::MissingAttribute { .. })
        ));
        assert!(matches!(
            parse(ACC.replace("14/11/2014", "31/02/2014").as_bytes()),
            Err(DaticertError::BadDate { .. })
        ));
        assert!(matches!(
            parse(ACC.replace("+0100", "CET").as_bytes()),
            Err(DaticertError::BadDate { .. })
        ));
        assert!(matches!(
            parse(ACC.replace("<dati>", "<dati><dati-extra/>").as_bytes()),
            Err(DaticertError::UnexpectedElement { .. })
        ));
        assert!(matches!(
            parse(
                ACC.replace("</msgid>", "</msgid><msgid>x</msgid>")
                    .as_bytes()
            ),
            Err(DaticertError::Duplicate {
                element: "msgid",
                ..
            })
        ));
    }

    #[test]
    fn hostile_input() {
        assert_eq!(parse(b"\xff\xfe"), Err(DaticertError::NotUtf8));
        assert!(matches!(parse(b"<postacert"), Err(DaticertError::Xml(_))));
        assert!(matches!(parse(b"<a/>"), Err(DaticertError::WrongRoot(_))));
        let bomb = "<?xml version=\"1.0\"?><!DOCTYPE postacert [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;\">]><postacert tipo=\"accettazione\">&b;</postacert>";
        assert!(matches!(parse(bomb.as_bytes()), Err(DaticertError::Xml(_))));
    }

    #[test]
    fn round_trips_the_builder_output() {
        let d = parse(ACC.as_bytes()).unwrap();
        assert_eq!(parse(d.to_xml().as_bytes()).unwrap(), d);
    }
}
