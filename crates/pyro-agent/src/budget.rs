//! Replies that carry text must fit one frame once JSON-encoded, whatever
//! the text holds (a control byte costs six bytes escaped). These helpers
//! cut text to a budget of encoded bytes.

/// What one byte of raw output may cost in a JSON string, at most:
/// `\u00XX` for control bytes, a replacement character (3 bytes) for a
/// byte of broken UTF-8.
fn byte_cost(b: u8) -> usize {
    match b {
        b'\n' | b'\r' | b'\t' | b'"' | b'\\' => 2,
        0..=0x1f | 0x7f => 6,
        0x80.. => 3,
        _ => 1,
    }
}

/// How many leading bytes of `bytes` fit in `budget` encoded bytes.
pub fn head_len(bytes: &[u8], budget: usize) -> usize {
    let mut used = 0usize;
    for (i, b) in bytes.iter().enumerate() {
        used += byte_cost(*b);
        if used > budget {
            return i;
        }
    }
    bytes.len()
}

/// The longest tail of `text` that fits in `budget` encoded bytes, and
/// whether anything was cut.
pub fn tail(text: &str, budget: usize) -> (&str, bool) {
    let mut used = 0usize;
    for (i, c) in text.char_indices().rev() {
        let mut buf = [0u8; 4];
        used += c
            .encode_utf8(&mut buf)
            .bytes()
            .map(byte_cost)
            .sum::<usize>();
        if used > budget {
            let start = i + c.len_utf8();
            return (&text[start..], true);
        }
    }
    (text, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn what_fits_encodes_within_the_budget(
            bytes in prop::collection::vec(any::<u8>(), 0..4000),
            budget in 0usize..3000,
        ) {
            let n = head_len(&bytes, budget);
            let text = String::from_utf8_lossy(&bytes[..n]);
            prop_assert!(serde_json::to_string(&text).unwrap().len() <= budget + 2);
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            let (t, cut) = tail(&lossy, budget);
            prop_assert!(serde_json::to_string(t).unwrap().len() <= budget + 2);
            prop_assert!(lossy.ends_with(t));
            prop_assert_eq!(cut, t.len() < lossy.len());
        }
    }
}
