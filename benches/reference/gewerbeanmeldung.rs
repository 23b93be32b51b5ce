//! The reference for the mapping benchmark: the Gewerbeanmeldung →
//! XGewerbeanzeige 2.2 document that `mappings/xgewerbeanzeige-2.2/
//! gewerbeanmeldung.yaml` describes, written by hand in Rust as glue code
//! would be: serde for the input, quick-xml for the output, the code lists
//! in hash maps. The benchmark checks that it writes the mapping's bytes
//! exactly before it times either; the mapping engine's rate is then
//! quoted as a share of this one's.

use std::collections::HashMap;
use std::io::Write;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use serde::Deserialize;

#[derive(Deserialize)]
struct Queued<'a> {
    #[serde(borrow)]
    id: &'a str,
    region: &'a str,
    #[serde(rename = "receivedAt")]
    received_at: &'a str,
    #[serde(rename = "submittedAt")]
    submitted_at: Option<&'a str>,
    #[serde(borrow)]
    data: Form<'a>,
}

#[derive(Deserialize)]
struct Form<'a> {
    #[serde(borrow)]
    betrieb: Betrieb<'a>,
    beschaeftigte: Beschaeftigte,
    #[serde(default)]
    betriebsart: Vec<&'a str>,
    niederlassung: Option<&'a str>,
    #[serde(default)]
    reisegewerbe: bool,
    #[serde(default)]
    nebenerwerb: bool,
    #[serde(borrow)]
    betriebsstaette: Anschrift<'a>,
    #[serde(borrow, default)]
    personen: Vec<Person<'a>>,
    beginn: Option<&'a str>,
    #[serde(borrow)]
    taetigkeit: Taetigkeit<'a>,
}

#[derive(Deserialize)]
struct Betrieb<'a> {
    name: &'a str,
    rechtsform: &'a str,
    #[serde(borrow)]
    register: Register<'a>,
}

#[derive(Deserialize)]
struct Register<'a> {
    art: &'a str,
    nummer: &'a str,
    ort: &'a str,
    gericht: &'a str,
}

#[derive(Deserialize)]
struct Beschaeftigte {
    vollzeit: u32,
    teilzeit: u32,
}

#[derive(Deserialize)]
struct Anschrift<'a> {
    strasse: &'a str,
    hausnummer: &'a str,
    plz: &'a str,
    ort: &'a str,
}

#[derive(Deserialize)]
struct Person<'a> {
    funktion: &'a str,
    familienname: &'a str,
    vornamen: &'a str,
    geschlecht: &'a str,
    geburtsname: Option<&'a str>,
    geburtsdatum: &'a str,
    geburtsort: &'a str,
    geburtsland: &'a str,
    #[serde(borrow, default)]
    staatsangehoerigkeiten: Vec<&'a str>,
    #[serde(borrow)]
    anschrift: Anschrift<'a>,
    telefon: Option<&'a str>,
    email: Option<&'a str>,
}

#[derive(Deserialize)]
struct Taetigkeit<'a> {
    schwerpunkt: &'a str,
    schluessel: &'a str,
    #[serde(borrow, default)]
    weitere: Vec<&'a str>,
}

/// The two code lists the mapping looks up, read once.
pub struct CodeLists {
    rechtsform: HashMap<String, String>,
    staatsangehoerigkeit: HashMap<String, String>,
}

#[derive(Deserialize)]
struct CodeListFile {
    codes: HashMap<String, String>,
}

impl CodeLists {
    pub fn load(codelists: &std::path::Path) -> Self {
        let read = |name: &str| -> HashMap<String, String> {
            let text = std::fs::read_to_string(codelists.join(name)).unwrap();
            serde_saphyr::from_str::<CodeListFile>(&text).unwrap().codes
        };
        Self { rechtsform: read("xgewerbeanzeige-rechtsform.yaml"), staatsangehoerigkeit: read("destatis-staatsangehoerigkeit.yaml") }
    }
}

const NS: &str = "http://www.xgewerbeanzeige.de/spezifikation/2.2";

/// The document for the queued submission `input`.
pub fn render(input: &[u8], lists: &CodeLists) -> Vec<u8> {
    let q: Queued<'_> = serde_json::from_slice(input).unwrap();
    let mut w = Writer::new_with_indent(Vec::with_capacity(5 * 1024), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None))).unwrap();
    let root = BytesStart::new("xga:abh.gewerbemeldung.0500").with_attributes([
        ("xmlns:xga", NS),
        ("produkt", "amtsbote"),
        ("produkthersteller", "amtsbote contributors"),
        ("produktversion", "0.1"),
        ("standard", "XGewerbeanzeige"),
        ("version", "2.2"),
    ]);
    w.write_event(Event::Start(root)).unwrap();
    let ags = ags(q.region);
    let message_id = uuid::Uuid::new_v5(&q.id.parse().unwrap(), b"nachricht").to_string();
    open(&mut w, "xga:nachrichtenkopf");
    open(&mut w, "xga:identifikation.nachricht");
    leaf(&mut w, "xga:nachrichtenUUID", &message_id);
    code(&mut w, "xga:nachrichtentyp", "0500");
    leaf(&mut w, "xga:erstellungszeitpunkt", q.received_at);
    close(&mut w, "xga:identifikation.nachricht");
    open(&mut w, "xga:leser");
    open(&mut w, "xga:behoerdenkennung");
    code_with(&mut w, "xga:praefix", &[("listVersionID", "7")], "MELDID");
    let kennung = [("listURI", "urn:de:bund:destatis:bevoelkerungsstatistik:schluessel:ags"), ("listVersionID", "2018-01-31")];
    code_with(&mut w, "xga:kennung", &kennung, &ags);
    close(&mut w, "xga:behoerdenkennung");
    close(&mut w, "xga:leser");
    close(&mut w, "xga:nachrichtenkopf");

    let f = &q.data;
    open(&mut w, "xga:satz");
    open(&mut w, "xga:anmeldung");
    leaf(&mut w, "xga:satzErstellung", q.received_at);
    if let Some(at) = q.submitted_at {
        leaf(&mut w, "xga:ereigniszeitpunkt", at);
    }
    code(&mut w, "xga:istKorrektur", "0");
    code(&mut w, "xga:gemeindeSchluessel", &ags);
    leaf(&mut w, "xga:uuid", q.id);
    open(&mut w, "xga:gewerbe");
    open(&mut w, "xga:betrieb");
    leaf(&mut w, "xga:ID", "1");
    leaf(&mut w, "xga:eingetragenerName", f.betrieb.name);
    leaf(&mut w, "xga:eintragungNr", f.betrieb.register.nummer);
    leaf(&mut w, "xga:eintragungOrt", f.betrieb.register.ort);
    code(&mut w, "xga:eintragungArt", f.betrieb.register.art);
    code(&mut w, "xga:gerichtSchluessel", f.betrieb.register.gericht);
    code(&mut w, "xga:rechtsformSchluessel", &lists.rechtsform[f.betrieb.rechtsform]);
    close(&mut w, "xga:betrieb");
    leaf(&mut w, "xga:anzahlVollzeitBeschaeftigte", &f.beschaeftigte.vollzeit.to_string());
    leaf(&mut w, "xga:anzahlTeilzeitBeschaeftigte", &f.beschaeftigte.teilzeit.to_string());
    open(&mut w, "xga:betriebArt");
    for (element, kind) in [("xga:industrie", "industrie"), ("xga:handwerk", "handwerk"), ("xga:handel", "handel"), ("xga:sonstiges", "sonstiges")] {
        code(&mut w, element, flag(f.betriebsart.contains(&kind)));
    }
    close(&mut w, "xga:betriebArt");
    let niederlassung = match f.niederlassung.unwrap_or("haupt") {
        "haupt" => "1",
        "zweig" => "2",
        "zweigstelle" => "3",
        other => panic!("unknown niederlassung {other}"),
    };
    code(&mut w, "xga:niederlassungArt", niederlassung);
    code(&mut w, "xga:istReisegewerbe", flag(f.reisegewerbe));
    code(&mut w, "xga:istNebenerwerb", flag(f.nebenerwerb));
    anschrift(&mut w, &f.betriebsstaette);
    for p in &f.personen {
        open(&mut w, "xga:beteiligtePerson");
        code(&mut w, "xga:personFunktion", p.funktion);
        leaf(&mut w, "xga:familienname", p.familienname);
        leaf(&mut w, "xga:vorname", p.vornamen);
        code(&mut w, "xga:geschlecht", p.geschlecht);
        if let Some(name) = p.geburtsname {
            leaf(&mut w, "xga:geburtsname", name);
        }
        leaf(&mut w, "xga:geburtsdatum", &berlin_date_ddmmyyyy(p.geburtsdatum));
        leaf(&mut w, "xga:geburtsort", p.geburtsort);
        leaf(&mut w, "xga:geburtsland", p.geburtsland);
        open(&mut w, "xga:staatangehoerigkeiten");
        for country in &p.staatsangehoerigkeiten {
            code_with(&mut w, "xga:staatsangehoerigkeitSchluessel", &[("listVersionID", "2019-04-01")], &lists.staatsangehoerigkeit[*country]);
        }
        close(&mut w, "xga:staatangehoerigkeiten");
        anschrift(&mut w, &p.anschrift);
        for (channel, address) in [("02", p.telefon), ("01", p.email)] {
            if let Some(address) = address {
                open(&mut w, "xga:erreichbarkeit");
                code(&mut w, "xga:kanal", channel);
                leaf(&mut w, "xga:kennung", address);
                close(&mut w, "xga:erreichbarkeit");
            }
        }
        close(&mut w, "xga:beteiligtePerson");
    }
    close(&mut w, "xga:gewerbe");
    if let Some(beginn) = f.beginn {
        leaf(&mut w, "xga:gueltigAb", beginn);
    }
    open(&mut w, "xga:taetigkeitenGesamt");
    open(&mut w, "xga:schwerpunkt");
    leaf(&mut w, "xga:taetigkeitSchwerpunkt", f.taetigkeit.schwerpunkt);
    leaf(&mut w, "xga:taetigkeitSchluessel", f.taetigkeit.schluessel);
    close(&mut w, "xga:schwerpunkt");
    if !f.taetigkeit.weitere.is_empty() {
        open(&mut w, "xga:weitereTaetigkeiten");
        leaf(&mut w, "xga:taetigkeitenZusammengefasst", &f.taetigkeit.weitere.join("|"));
        close(&mut w, "xga:weitereTaetigkeiten");
    }
    close(&mut w, "xga:taetigkeitenGesamt");
    code(&mut w, "xga:grundAnmeldungSchluessel", "01");
    close(&mut w, "xga:anmeldung");
    close(&mut w, "xga:satz");
    close(&mut w, "xga:abh.gewerbemeldung.0500");
    let mut out = w.into_inner();
    out.write_all(b"\n").unwrap();
    out
}

/// The AGS of a 12-digit ARS: without the four Gemeindeverband digits.
fn ags(region: &str) -> String {
    if region.len() == 12 { format!("{}{}", &region[0..5], &region[9..12]) } else { region.to_owned() }
}

fn flag(on: bool) -> &'static str {
    if on { "1" } else { "0" }
}

/// The Berlin date of a UTC instant (`2015-08-08T22:00:00+0000`), as
/// DDMMYYYY.
fn berlin_date_ddmmyyyy(instant: &str) -> String {
    let timestamp = jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%z", instant).unwrap();
    let date = timestamp.in_tz("Europe/Berlin").unwrap().date();
    format!("{:02}{:02}{:04}", date.day(), date.month(), date.year())
}

fn anschrift(w: &mut Writer<Vec<u8>>, a: &Anschrift<'_>) {
    open(w, "xga:anschrift");
    leaf(w, "xga:strasse", a.strasse);
    leaf(w, "xga:hausNrVon", a.hausnummer);
    leaf(w, "xga:ort", a.ort);
    leaf(w, "xga:plz", a.plz);
    close(w, "xga:anschrift");
}

fn open(w: &mut Writer<Vec<u8>>, name: &str) {
    w.write_event(Event::Start(BytesStart::new(name))).unwrap();
}

fn close(w: &mut Writer<Vec<u8>>, name: &str) {
    w.write_event(Event::End(BytesEnd::new(name))).unwrap();
}

fn leaf(w: &mut Writer<Vec<u8>>, name: &str, text: &str) {
    w.write_event(Event::Start(BytesStart::new(name))).unwrap();
    w.write_event(Event::Text(BytesText::new(text))).unwrap();
    w.write_event(Event::End(BytesEnd::new(name))).unwrap();
}

/// `<name><code>value</code></name>`, as XÖV code types are.
fn code(w: &mut Writer<Vec<u8>>, name: &str, value: &str) {
    code_with(w, name, &[], value);
}

fn code_with(w: &mut Writer<Vec<u8>>, name: &str, attributes: &[(&str, &str)], value: &str) {
    w.write_event(Event::Start(BytesStart::new(name).with_attributes(attributes.iter().copied()))).unwrap();
    leaf(w, "code", value);
    w.write_event(Event::End(BytesEnd::new(name))).unwrap();
}
