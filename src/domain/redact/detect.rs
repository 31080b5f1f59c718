//! The built-in detectors: patterns, and the checks that keep their false positives down
//! (Luhn for cards, mod-97 for IBANs, the never-issued areas for SSNs).

/// A check of a match that a pattern alone cannot do (a checksum, a forbidden range).
pub(super) type Check = Option<fn(&str) -> bool>;

/// `(name, regex, check)` of each built-in detector found by a regex, in priority order.
/// Cards are found by [`cards`] instead: separators may fall anywhere between digits.
pub(super) fn builtin() -> Vec<(&'static str, &'static str, Check)> {
    vec![
        (
            "secret",
            concat!(
                r"(?:\bsk-[A-Za-z0-9_-]{16,})",
                r"|(?:\bBearer\s+[A-Za-z0-9._~+/=-]{16,})",
                r"|(?:\b(?:AKIA|ASIA)[0-9A-Z]{16}\b)",
                r"|(?:\b(?:ghp|gho|ghs|xoxb|xoxp)[_-][A-Za-z0-9_-]{16,})",
                r"|(?:\b[0-9a-fA-F]{32,}\b)",
                r"|(?:[A-Za-z0-9+/_-]{40,}={0,2})",
            ),
            Some(looks_secret),
        ),
        (
            "email",
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
            None,
        ),
        (
            "iban",
            r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
            Some(iban_valid),
        ),
        ("ssn", r"\b\d{3}-\d{2}-\d{4}\b", Some(ssn_valid)),
        (
            "phone",
            concat!(
                r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4})",
                r"|(?:(?:\(\d{3}\)|\b\d{3})[ .-]?\d{3}[ .-]\d{4}\b)",
            ),
            Some(phone_valid),
        ),
    ]
}

/// A long token counts as a secret when it mixes letters and digits (or has a known prefix),
/// so long plain words and numbers are left alone.
fn looks_secret(s: &str) -> bool {
    let prefixed = ["sk-", "Bearer", "AKIA", "ASIA", "ghp", "gho", "ghs", "xox"]
        .iter()
        .any(|p| s.starts_with(p));
    prefixed
        || (s.bytes().any(|b| b.is_ascii_digit()) && s.bytes().any(|b| b.is_ascii_alphabetic()))
}

/// Phone numbers have 7 to 15 digits (E.164).
fn phone_valid(s: &str) -> bool {
    let n = s.bytes().filter(u8::is_ascii_digit).count();
    (7..=15).contains(&n)
}

/// US SSNs never start with 000, 666 or 9xx, and no group is all zeros.
fn ssn_valid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    matches!(parts.as_slice(), [a, b, c]
        if *a != "000" && *a != "666" && !a.starts_with('9') && *b != "00" && *c != "0000")
}

/// The Luhn checksum of a string of digits (other characters ignored).
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() < 2 {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The ISO 13616 mod-97 check of an IBAN (spaces ignored).
pub fn iban_valid(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) || !compact.is_ascii() {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        // Letters count as two digits (A = 10 … Z = 35).
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Byte ranges of payment card numbers in `text`: 13 to 19 digits, each pair separated by at
/// most one space or dash, passing Luhn. A run of digit groups is taken whole when it is a
/// card; otherwise every window of it that starts and ends at a group boundary is tried,
/// longest first, so a card next to other numbers is still found.
pub(super) fn cards(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // One run: digits with single separators between them.
        let start = i;
        let mut digits: Vec<usize> = Vec::new(); // byte index of each digit
        let mut group_starts: Vec<usize> = vec![0]; // index into `digits` where a group starts
        let mut j = i;
        while j < bytes.len() {
            if bytes[j].is_ascii_digit() {
                digits.push(j);
                j += 1;
            } else if (bytes[j] == b' ' || bytes[j] == b'-')
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
                && j > start
                && bytes[j - 1].is_ascii_digit()
            {
                group_starts.push(digits.len());
                j += 1;
            } else {
                break;
            }
        }
        i = j;
        out.extend(cards_in_run(text, &digits, &group_starts));
    }
    out
}

fn digits_of(text: &str, digits: &[usize]) -> String {
    digits.iter().map(|&b| text.as_bytes()[b] as char).collect()
}

fn cards_in_run(text: &str, digits: &[usize], group_starts: &[usize]) -> Vec<(usize, usize)> {
    let ok = |from: usize, to: usize| {
        let n = to - from;
        (13..=19).contains(&n) && luhn_valid(&digits_of(text, &digits[from..to]))
    };
    if ok(0, digits.len()) {
        return vec![(digits[0], digits[digits.len() - 1] + 1)];
    }
    // Windows at group boundaries (and, for an unseparated run, the run is one group).
    let mut bounds: Vec<usize> = group_starts.to_vec();
    bounds.push(digits.len());
    let mut found = Vec::new();
    let mut from_idx = 0;
    while from_idx < bounds.len() {
        let from = bounds[from_idx];
        let mut hit = None;
        for to_idx in (from_idx + 1..bounds.len()).rev() {
            if ok(from, bounds[to_idx]) {
                hit = Some(to_idx);
                break;
            }
        }
        match hit {
            Some(to_idx) => {
                found.push((digits[from], digits[bounds[to_idx] - 1] + 1));
                from_idx = to_idx;
            }
            None => from_idx += 1,
        }
    }
    found
}
