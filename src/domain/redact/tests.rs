use proptest::prelude::*;
use serde_json::json;

use super::*;

fn all() -> Redactor {
    Redactor::new(&[], &[("employee".into(), r"EMP-\d{6}".into())]).unwrap()
}

#[test]
fn each_detector_finds_its_kind_and_leaves_look_alikes() {
    let r = all();
    let cases: &[(&str, Option<&str>)] = &[
        ("card 4111 1111 1111 1111 ok", Some("card")),
        ("card 4111-1111-1111-1111", Some("card")),
        ("card 378282246310005", Some("card")),
        ("not a card 4111 1111 1111 1112", None),
        ("mail jane.doe+x@example.co.uk now", Some("email")),
        ("call +44 20 7946 0958 today", Some("phone")),
        ("call (415) 555-2671", Some("phone")),
        ("iban GB82 WEST 1234 5698 7654 32", Some("iban")),
        ("iban DE89370400440532013000", Some("iban")),
        ("bad iban GB83 WEST 1234 5698 7654 32", None),
        ("ssn 123-45-6789", Some("ssn")),
        ("not ssn 000-45-6789", None),
        ("key sk-proj-abcdefghijklmnop1234", Some("secret")),
        (
            "Authorization: Bearer abcdefghijklmnopqrstuvwxyz123",
            Some("secret"),
        ),
        ("aws AKIAIOSFODNN7EXAMPLE", Some("secret")),
        (
            "hex 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            Some("secret"),
        ),
        ("badge EMP-123456", Some("employee")),
        ("the year 2026 and order 12345", None),
        ("supercalifragilisticexpialidociouslyextraordinarily", None),
    ];
    for (text, want) in cases {
        let got: Vec<String> = r.find(text).into_iter().map(|f| f.detector).collect();
        match want {
            Some(d) => assert_eq!(got, vec![d.to_string()], "{text}"),
            None => assert!(got.is_empty(), "{text}: {got:?}"),
        }
    }
}

#[test]
fn masking_uses_typed_numbered_placeholders_and_counts_without_values() {
    let r = all();
    let mut request = json!({"messages": [
        {"role": "system", "content": "Card 4111 1111 1111 1111, mail a@b.io"},
        {"role": "user", "content": [{"type": "text", "text": "again 4111111111111111 and c@d.io and a@b.io"}]}
    ]});
    let m = r.mask_request(&mut request);
    let text = request.to_string();
    assert!(text.contains("Card [CARD_1], mail [EMAIL_1]"), "{text}");
    assert!(
        text.contains("again [CARD_2] and [EMAIL_2] and [EMAIL_1]"),
        "{text}"
    );
    assert_eq!(m.counts.get("card"), Some(&2));
    assert_eq!(m.counts.get("email"), Some(&3));
    assert!(!text.contains("4111") && !text.contains("a@b.io"));
    assert_eq!(m.restore("to [EMAIL_1]"), "to a@b.io");
}

#[test]
fn a_card_next_to_other_numbers_is_still_found() {
    let r = all();
    let found = r.find("ref 12 4111 1111 1111 1111 99");
    assert!(found.iter().any(|f| f.detector == "card"), "{found:?}");
}

#[test]
fn unknown_detectors_and_bad_regexes_are_named() {
    assert!(
        Redactor::new(&["cards".into()], &[])
            .unwrap_err()
            .contains("`cards`")
    );
    assert!(
        Redactor::new(&[], &[("x".into(), "(".into())])
            .unwrap_err()
            .contains("`x`")
    );
    let only_email = Redactor::new(&["email".into()], &[]).unwrap();
    assert!(only_email.find("4111 1111 1111 1111").is_empty());
}

#[test]
fn the_strictest_mode_wins() {
    assert_eq!(strictest(&[Mode::Off, Mode::Mask]), Mode::Mask);
    assert_eq!(strictest(&[Mode::Block, Mode::Mask]), Mode::Block);
    assert_eq!(strictest(&[]), Mode::Off);
}

/// A Luhn-valid PAN of `len` digits starting with `body`.
fn with_check_digit(mut body: Vec<u32>) -> String {
    for d in 0..10 {
        body.push(d);
        let s: String = body
            .iter()
            .map(|d| char::from_digit(*d, 10).unwrap())
            .collect();
        if luhn_valid(&s) {
            return s;
        }
        body.pop();
    }
    unreachable!("one check digit always fits")
}

fn pan() -> impl Strategy<Value = String> {
    (13usize..=19)
        .prop_flat_map(|len| proptest::collection::vec(0u32..10, len - 1))
        .prop_map(with_check_digit)
}

fn formatted() -> impl Strategy<Value = String> {
    (pan(), proptest::collection::vec(0u8..4, 19)).prop_map(|(p, seps)| {
        let mut out = String::new();
        for (i, c) in p.chars().enumerate() {
            if i > 0 {
                match seps[i] {
                    1 => out.push(' '),
                    2 => out.push('-'),
                    _ => {}
                }
            }
            out.push(c);
        }
        out
    })
}

proptest! {
    #[test]
    fn no_luhn_valid_card_number_survives_masking(
        card in formatted(),
        before in "[a-zA-Z ,.:]{0,20}",
        after in "[a-zA-Z ,.:]{0,20}",
    ) {
        let r = Redactor::new(&[], &[]).unwrap();
        let text = format!("{before}{card}{after}");
        let masked = r.mask(&text, &mut Masking::default());
        let digits: String = card.chars().filter(char::is_ascii_digit).collect();
        let left: String = masked.chars().filter(char::is_ascii_digit).collect();
        prop_assert!(!left.contains(&digits), "{text} -> {masked}");
        prop_assert!(masked.contains("[CARD_1]") || masked.contains("[SECRET_1]") || masked.contains("[PHONE_1]"), "{text} -> {masked}");
    }
}
