//! Which rule a request falls under: free, priced by a route, or unmatched.
//!
//! Patterns are plain text with `*` wildcards (each matches any run of
//! characters, `/` included): `/articles/*`, `/sitemap*.xml`,
//! `*.daily.example`. No regular expressions: a publisher can read a price
//! list at a glance, and matching is linear in the pattern with no
//! backtracking blow-up ([`Pattern::matches`] is greedy over fixed pieces).
//! Routes are tried in file order; the first match wins. Free paths are tried
//! before routes, so `/robots.txt` is never charged by a broad `/*` route.

use crate::config::{GateConfig, PATTERN_BYTES_MAX, Route};

/// A `*`-wildcard pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    /// The fixed pieces between the wildcards.
    pieces: Vec<String>,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern, String> {
        if text.is_empty() || text.len() > PATTERN_BYTES_MAX {
            return Err(format!("a pattern has 1 to {PATTERN_BYTES_MAX} bytes"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a pattern is visible ASCII".into());
        }
        Ok(Pattern { text: text.to_owned(), pieces: text.split('*').map(str::to_owned).collect() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has no wildcard (an exact path, listed as is in discovery).
    pub fn is_exact(&self) -> bool {
        self.pieces.len() == 1
    }

    /// Whether `text` matches: the first piece is a prefix, the last a
    /// suffix, and the middle pieces appear in order between them. Greedy
    /// leftmost matching of the middle pieces is exact for `*`-only patterns.
    pub fn matches(&self, text: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("split yields at least one piece");
        let Some(last) = rest.last() else {
            return text == first;
        };
        let middle = &rest[..rest.len() - 1];
        if text.len() < first.len() + last.len() || !text.starts_with(first.as_str()) || !text.ends_with(last.as_str())
        {
            return false;
        }
        let mut window = &text[first.len()..text.len() - last.len()];
        for piece in middle {
            match window.find(piece.as_str()) {
                Some(at) => window = &window[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

/// What a request is, under the price list.
#[derive(Debug)]
pub enum Decision<'a> {
    /// Passed to the origin unpaid (a free path, a free route, or unmatched under `unmatched = "free"`).
    Free,
    /// Refused: no route, and `unmatched = "deny"`.
    Unmatched,
    /// Priced by this route.
    Priced(&'a Route),
}

/// Classifies a request by its host (lowercase, without port) and path (without query).
pub fn decide<'a>(config: &'a GateConfig, host: &str, path: &str) -> Decision<'a> {
    if config.free.iter().any(|free| free.matches(path)) || path == config.discovery_path {
        return Decision::Free;
    }
    let route = config
        .routes
        .iter()
        .find(|route| route.path.matches(path) && route.host.as_ref().is_none_or(|h| h.matches(host)));
    match route {
        Some(route) if route.price.is_none() => Decision::Free,
        Some(route) => Decision::Priced(route),
        None if config.unmatched == crate::config::Unmatched::Free => Decision::Free,
        None => Decision::Unmatched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wildcards_match_runs_of_characters() {
        let p = |t: &str| Pattern::new(t).unwrap();
        assert!(p("/articles/*").matches("/articles/a/b"));
        assert!(p("/articles/*").matches("/articles/"));
        assert!(!p("/articles/*").matches("/articles"));
        assert!(p("/sitemap*.xml").matches("/sitemap-news.xml"));
        assert!(p("/sitemap*.xml").matches("/sitemap.xml"));
        assert!(!p("/sitemap*.xml").matches("/sitemap.xml.gz"));
        assert!(p("*.daily.example").matches("api.daily.example"));
        assert!(!p("*.daily.example").matches("daily.example"));
        assert!(p("/a*b*c").matches("/abc") && p("/a*b*c").matches("/axxbyyc") && !p("/a*b*c").matches("/acb"));
        assert!(p("/exact").matches("/exact") && !p("/exact").matches("/exact/"));
        assert!(!p("/ab*ab").matches("/ab") && p("/ab*ab").matches("/abab"));
        assert!(Pattern::new("").is_err() && Pattern::new("/a b").is_err());
    }

    /// The reference: a straightforward recursive matcher.
    fn reference(pattern: &[u8], text: &[u8]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_reference(pattern in "[ab*/]{1,8}", text in "[ab/]{0,10}") {
            let compiled = Pattern::new(&pattern).unwrap();
            prop_assert_eq!(compiled.matches(&text), reference(pattern.as_bytes(), text.as_bytes()));
        }
    }
}
