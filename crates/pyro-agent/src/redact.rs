//! Secret values never reach a shell's output buffer: output passes through
//! a [`Redactor`] first, which replaces every secret with `[REDACTED]`. A
//! secret split across two reads of the terminal is still caught: the tail
//! that could begin a secret is held back until the next read settles it
//! (only such a tail: a prompt is never held).

const REDACTED: &[u8] = b"[REDACTED]";

#[derive(Default)]
pub struct Redactor {
    held: Vec<u8>,
}

/// Where the earliest (and, there, longest) secret starts in `hay`.
/// Where `s` next occurs in `hay` at or after `from` (a linear search).
fn find_from(hay: &[u8], s: &[u8], from: usize) -> Option<usize> {
    if s.is_empty() || from > hay.len() {
        return None;
    }
    memchr::memmem::find(&hay[from..], s).map(|i| i + from)
}

/// The earliest secret among the next occurrences `next` (the longest of
/// those starting there).
fn earliest(next: &[Option<usize>], secrets: &[Vec<u8>]) -> Option<(usize, usize)> {
    next.iter()
        .zip(secrets)
        .filter_map(|(n, s)| n.map(|i| (i, s.len())))
        .min_by_key(|(i, len)| (*i, std::cmp::Reverse(*len)))
}

/// Moves every secret's next occurrence to at or after `pos`.
fn refresh(next: &mut [Option<usize>], secrets: &[Vec<u8>], hay: &[u8], pos: usize) {
    for (n, s) in next.iter_mut().zip(secrets) {
        if matches!(n, Some(j) if *j < pos) {
            *n = find_from(hay, s, pos);
        }
    }
}

/// The longest end of `bytes` that a secret starts with (and does not
/// complete): Knuth–Morris–Pratt over at most the secret's length.
fn overlap(bytes: &[u8], s: &[u8]) -> usize {
    if s.len() < 2 {
        return 0;
    }
    let mut fail = vec![0usize; s.len()];
    let mut k = 0;
    for i in 1..s.len() {
        while k > 0 && s[i] != s[k] {
            k = fail[k - 1];
        }
        if s[i] == s[k] {
            k += 1;
        }
        fail[i] = k;
    }
    let mut q = 0;
    for &b in &bytes[bytes.len().saturating_sub(s.len() - 1)..] {
        if q == s.len() {
            q = fail[q - 1];
        }
        while q > 0 && b != s[q] {
            q = fail[q - 1];
        }
        if b == s[q] {
            q += 1;
        }
    }
    if q == s.len() {
        fail[q - 1]
    } else {
        q
    }
}

/// How many bytes at the end of `bytes` could begin a secret.
fn pending(bytes: &[u8], secrets: &[Vec<u8>]) -> usize {
    secrets.iter().map(|s| overlap(bytes, s)).max().unwrap_or(0)
}

impl Redactor {
    pub fn push(&mut self, more: &[u8], secrets: &[Vec<u8>]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(more);
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        let mut next: Vec<Option<usize>> = secrets.iter().map(|s| find_from(&buf, s, 0)).collect();
        while let Some((i, len)) = earliest(&next, secrets) {
            // A longer secret may start here and go on in the next piece.
            let longer = secrets
                .iter()
                .any(|s| s.len() > buf.len() - i && s.starts_with(&buf[i..]));
            if longer {
                out.extend_from_slice(&buf[pos..i]);
                self.held = buf[i..].to_vec();
                return out;
            }
            out.extend_from_slice(&buf[pos..i]);
            out.extend_from_slice(REDACTED);
            pos = i + len;
            refresh(&mut next, secrets, &buf, pos);
        }
        let rest = &buf[pos..];
        let hold = pending(rest, secrets);
        out.extend_from_slice(&rest[..rest.len() - hold]);
        self.held = rest[rest.len() - hold..].to_vec();
        out
    }

    pub fn finish(&mut self, secrets: &[Vec<u8>]) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        let mut pos = 0;
        let mut next: Vec<Option<usize>> = secrets.iter().map(|s| find_from(&held, s, 0)).collect();
        while let Some((i, len)) = earliest(&next, secrets) {
            out.extend_from_slice(&held[pos..i]);
            out.extend_from_slice(REDACTED);
            pos = i + len;
            refresh(&mut next, secrets, &held, pos);
        }
        out.extend_from_slice(&held[pos..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_long_secret_over_a_long_output_stays_linear() {
        // Naive matching would compare 64 KiB at each of a million offsets.
        let mut secret = vec![b'a'; 64 * 1024];
        secret.push(b'b');
        let secrets = vec![secret];
        let mut r = Redactor::default();
        let mut out = Vec::new();
        for _ in 0..16 {
            out.extend(r.push(&vec![b'a'; 64 * 1024], &secrets));
        }
        out.extend(r.push(b"b!", &secrets));
        out.extend(r.finish(&secrets));
        let mut want = vec![b'a'; 15 * 64 * 1024];
        want.extend_from_slice(REDACTED);
        want.push(b'!');
        assert_eq!(out.len(), want.len());
        assert!(out == want);
    }

    fn secrets() -> Vec<Vec<u8>> {
        vec![b"hunter22".to_vec(), b"abc".to_vec(), b"abcabd".to_vec()]
    }

    #[test]
    fn a_prompt_is_never_held_but_a_secret_beginning_is() {
        let mut r = Redactor::default();
        assert_eq!(r.push(b"pyro$ ", &secrets()), b"pyro$ ");
        assert_eq!(r.push(b"x hunt", &secrets()), b"x ");
        assert_eq!(r.push(b"er22 y", &secrets()), b"[REDACTED] y");
        assert_eq!(r.push(b"hun", &secrets()), b"");
        assert_eq!(r.push(b"gry", &secrets()), b"hungry");
        assert_eq!(r.push(b"ab", &secrets()), b"");
        assert_eq!(r.finish(&secrets()), b"ab");
    }

    proptest! {
        /// However the output is cut, no secret shows, and all else does.
        #[test]
        fn pieces_redact_as_the_whole_does(
            text in prop::collection::vec(
                prop_oneof![Just(b"hunter22".to_vec()), Just(b"abc".to_vec()),
                            Just(b"ab".to_vec()), Just(b"hunt".to_vec()), "[ -~]{0,5}".prop_map(String::into_bytes)],
                0..12,
            ),
            cuts in prop::collection::vec(0usize..40, 0..6),
        ) {
            let text: Vec<u8> = text.concat();
            let mut whole = Redactor::default();
            let mut expected = whole.push(&text, &secrets());
            expected.extend(whole.finish(&secrets()));
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= text.len()).collect();
            cuts.sort();
            let mut r = Redactor::default();
            let mut got = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                got.extend(r.push(&text[at..c], &secrets()));
                at = c;
            }
            got.extend(r.finish(&secrets()));
            prop_assert_eq!(&got, &expected);
            for s in secrets() {
                prop_assert!(!got.windows(s.len()).any(|w| w == s.as_slice()));
            }
        }
    }
}
