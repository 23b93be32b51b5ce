use super::*;

#[test]
fn soap_1_1_faults_by_class() {
    let client = br#"<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
        <soap:Fault><faultcode>soap:Client</faultcode><faultstring>Erika Mustermann ist unbekannt</faultstring></soap:Fault>
        </soap:Body></soap:Envelope>"#;
    let answer = read_answer(client, None);
    let fault = answer.fault.unwrap();
    assert_eq!(fault.code, "soap:Client");
    assert!(!fault.is_server_side());
    assert_eq!(fault.describe(), "soap:Client");

    let server = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Server.Database</faultcode></s:Fault></s:Body></s:Envelope>"#;
    assert!(read_answer(server, None).fault.unwrap().is_server_side());
}

#[test]
fn soap_1_2_faults_with_subcodes() {
    let answer = br#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:x="urn:x"><env:Body><env:Fault>
        <env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>x:SchemaInvalid</env:Value></env:Subcode></env:Code>
        <env:Reason><env:Text xml:lang="de">Feld geburtsdatum: 1964-08-12 ist ungueltig</env:Text></env:Reason>
        </env:Fault></env:Body></env:Envelope>"#;
    let fault = read_answer(answer, None).fault.unwrap();
    assert_eq!(fault.describe(), "env:Sender / x:SchemaInvalid");
    assert!(!fault.is_server_side());
    let receiver = br#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault><env:Code><env:Value>env:Receiver</env:Value></env:Code></env:Fault></env:Body></env:Envelope>"#;
    assert!(read_answer(receiver, None).fault.unwrap().is_server_side());
}

#[test]
fn the_receipt_is_the_text_of_the_named_element_in_the_body() {
    let answer = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header><vorgangsnummer>nicht-hier</vorgangsnummer></s:Header>
        <s:Body><r:antwort xmlns:r="urn:r"><r:vorgangsnummer> GEW-2026-0815 </r:vorgangsnummer></r:antwort></s:Body></s:Envelope>"#;
    let answer = read_answer(answer, Some("vorgangsnummer"));
    assert_eq!(answer, Answer { fault: None, receipt: Some("GEW-2026-0815".into()) });
    assert_eq!(read_answer(b"<not xml", Some("x")), Answer::default());
}

#[test]
fn the_envelope_wraps_the_document_without_its_declaration() {
    assert_eq!(without_declaration(b"\xEF\xBB\xBF<?xml version=\"1.0\"?>\n<a/>\n"), b"<a/>\n");
    assert_eq!(without_declaration(b"<a/>"), b"<a/>");
    let mut config = SoapConfig::new("http://127.0.0.1:9/svc");
    config.ws_addressing = true;
    config.action = Some("urn:a&b".into());
    let connector = config.build(&Context::new(".")).unwrap();
    let delivery = Delivery {
        submission_id: uuid::Uuid::nil(),
        delivery_id: uuid::Uuid::nil(),
        target: "t".into(),
        payload: Payload::Document { content_type: "application/xml".into(), body: Bytes::from_static(b"<a/>") },
        mapping_version: "v".into(),
        attempt: 1,
    };
    let envelope = connector.envelope(&delivery, b"<?xml version=\"1.0\"?><a/>");
    assert_eq!(
        std::str::from_utf8(&envelope).unwrap(),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:wsa=\"http://www.w3.org/2005/08/addressing\"><soap:Header><wsa:To>http://127.0.0.1:9/svc</wsa:To>\
         <wsa:Action>urn:a&amp;b</wsa:Action><wsa:MessageID>urn:uuid:00000000-0000-0000-0000-000000000000</wsa:MessageID>\
         </soap:Header><soap:Body><a/></soap:Body></soap:Envelope>"
    );
    config.action = Some("bad\"action".into());
    assert!(matches!(config.build(&Context::new(".")), Err(SoapConfigError::BadAction(_))));
}
