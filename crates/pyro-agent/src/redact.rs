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
fn first_secret(hay: &[u8], secrets: &[Vec<u8>]) -> Option<(usize, usize)> {
    secrets
        .iter()
        .filter(|s| !s.is_empty() && s.len() <= hay.len())
        .filter_map(|s| {
            hay.windows(s.len())
                .position(|w| w == s.as_slice())
                .map(|i| (i, s.len()))
        })
        .min_by_key(|(i, len)| (*i, std::cmp::Reverse(*len)))
}

/// The length of the longest tail of `bytes` that is a proper beginning of
/// a secret.
fn pending(bytes: &[u8], secrets: &[Vec<u8>]) -> usize {
    let longest = secrets.iter().map(Vec::len).max().unwrap_or(0);
    (1..longest.min(bytes.len() + 1))
        .rev()
        .find(|&n| {
            let tail = &bytes[bytes.len() - n..];
            secrets.iter().any(|s| s.len() > n && s.starts_with(tail))
        })
        .unwrap_or(0)
}

impl Redactor {
    /// What of `more` may be shown now, secrets replaced.
    pub fn push(&mut self, more: &[u8], secrets: &[Vec<u8>]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(more);
        let mut out = Vec::with_capacity(buf.len());
        let mut rest = &buf[..];
        while let Some((i, len)) = first_secret(rest, secrets) {
            // A longer secret may begin here and not be whole yet: wait.
            let longer = secrets
                .iter()
                .any(|s| s.len() > rest.len() - i && s.starts_with(&rest[i..]));
            if longer {
                out.extend_from_slice(&rest[..i]);
                self.held = rest[i..].to_vec();
                return out;
            }
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(REDACTED);
            rest = &rest[i + len..];
        }
        let hold = pending(rest, secrets);
        out.extend_from_slice(&rest[..rest.len() - hold]);
        self.held = rest[rest.len() - hold..].to_vec();
        out
    }

    /// Whatever was held back (the output ended), secrets replaced.
    pub fn finish(&mut self, secrets: &[Vec<u8>]) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        let mut rest = &held[..];
        while let Some((i, len)) = first_secret(rest, secrets) {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(REDACTED);
            rest = &rest[i + len..];
        }
        out.extend_from_slice(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
