//! Small word-level helpers for reading plain English without a regex engine.
//!
//! A [`Phrase`] is a slice of the user's message together with its ASCII-lowercased
//! twin. Matching happens on the lowercase side; whatever is kept (a task title, a new
//! description) is cut from the original side at the same byte offsets, so the user's
//! capitalisation survives. ASCII lowercasing never changes byte lengths, which is what
//! keeps the two sides aligned.

/// The user's words, in original case and ASCII-lowercased, at identical byte offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Phrase<'a> {
    orig: &'a str,
    lower: &'a str,
}

/// Punctuation that may surround words and is never part of a task reference.
const EDGE_PUNCTUATION: &[char] = &['.', ',', '!', '?', ';', ':', '(', ')', '"', '\'', '-'];

impl<'a> Phrase<'a> {
    /// Pairs `orig` with `lower`, which must be `orig.to_ascii_lowercase()`.
    pub(crate) fn new(orig: &'a str, lower: &'a str) -> Self {
        debug_assert_eq!(orig.len(), lower.len());
        Self { orig, lower }
    }

    pub(crate) fn orig(self) -> &'a str {
        self.orig
    }

    pub(crate) fn lower(self) -> &'a str {
        self.lower
    }

    pub(crate) fn is_empty(self) -> bool {
        self.orig.is_empty()
    }

    fn slice(self, start: usize, end: usize) -> Self {
        Self {
            orig: &self.orig[start..end],
            lower: &self.lower[start..end],
        }
    }

    /// Removes characters matching `pred` from both ends.
    pub(crate) fn trim_by(self, pred: impl Fn(char) -> bool) -> Self {
        let start = self.lower.len() - self.lower.trim_start_matches(&pred).len();
        let end = self.lower.trim_end_matches(&pred).len().max(start);
        self.slice(start, end)
    }

    pub(crate) fn trim(self) -> Self {
        self.trim_by(char::is_whitespace)
    }

    /// Trims whitespace and the punctuation that commonly pads a clause.
    pub(crate) fn trim_punctuation(self) -> Self {
        self.trim_by(|c| c.is_whitespace() || EDGE_PUNCTUATION.contains(&c))
    }

    /// Trims whitespace and sentence punctuation (`.`, `!`, `?`, `,`, `;`) from the end,
    /// and whitespace from the start; quotes stay, since they may close a title.
    pub(crate) fn trim_sentence_end(self) -> Self {
        let end = self
            .lower
            .trim_end_matches(|c: char| {
                c.is_whitespace() || matches!(c, '.' | '!' | '?' | ',' | ';')
            })
            .len();
        self.slice(0, end).trim()
    }

    /// Trims whitespace and separators (`,`, `:`, `-`) from the start only.
    pub(crate) fn trim_leading_separators(self) -> Self {
        let start = self.lower.len()
            - self
                .lower
                .trim_start_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ':' | '-'))
                .len();
        self.slice(start, self.lower.len())
    }

    /// If the phrase starts with `word` (lowercase, one or more words) as whole words,
    /// returns what follows it, trimmed.
    pub(crate) fn strip_word(self, word: &str) -> Option<Self> {
        if !self.lower.starts_with(word) || !boundary_after(self.lower, word.len(), word) {
            return None;
        }
        Some(self.slice(word.len(), self.lower.len()).trim())
    }

    /// Like [`Phrase::strip_word`] with the first of `words` that matches.
    pub(crate) fn strip_any(self, words: &[&'static str]) -> Option<(&'static str, Self)> {
        words
            .iter()
            .find_map(|w| self.strip_word(w).map(|rest| (*w, rest)))
    }

    /// If the phrase ends with `word` as whole words, returns what precedes it, trimmed.
    pub(crate) fn strip_suffix_word(self, word: &str) -> Option<Self> {
        if !self.lower.ends_with(word) {
            return None;
        }
        let start = self.lower.len() - word.len();
        if !boundary_before(self.lower, start, word) {
            return None;
        }
        Some(self.slice(0, start).trim())
    }

    /// Splits around the first whole-word occurrence of `word`.
    pub(crate) fn split_once_word(self, word: &str) -> Option<(Self, Self)> {
        let mut from = 0;
        while let Some(found) = self.lower[from..].find(word) {
            let start = from + found;
            let end = start + word.len();
            if boundary_before(self.lower, start, word) && boundary_after(self.lower, end, word) {
                return Some((
                    self.slice(0, start).trim(),
                    self.slice(end, self.lower.len()).trim(),
                ));
            }
            from = start + word.chars().next().map_or(1, char::len_utf8);
        }
        None
    }

    /// True when `word` occurs in the phrase as whole words.
    pub(crate) fn contains_word(self, word: &str) -> bool {
        self.split_once_word(word).is_some()
    }

    /// The first word (letters and digits only) and the rest after it, trimmed.
    pub(crate) fn first_word(self) -> Option<(&'a str, Self)> {
        let end = self
            .lower
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(self.lower.len());
        if end == 0 {
            return None;
        }
        Some((&self.lower[..end], self.slice(end, self.lower.len()).trim()))
    }

    /// Lowercase words with surrounding punctuation removed (a leading `#` is kept).
    pub(crate) fn words(self) -> impl Iterator<Item = &'a str> {
        self.lower
            .split(|c: char| c.is_whitespace() || c == ',')
            .map(|w| w.trim_matches(|c: char| EDGE_PUNCTUATION.contains(&c)))
            .filter(|w| !w.is_empty())
    }
}

/// A match ending in a letter or digit must not run on into the next word.
fn boundary_after(text: &str, end: usize, word: &str) -> bool {
    let word_ends_alnum = word.chars().last().is_some_and(|c| c.is_alphanumeric());
    !word_ends_alnum
        || !text[end..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric)
}

/// A match starting with a letter or digit must not be the tail of a longer word.
fn boundary_before(text: &str, start: usize, word: &str) -> bool {
    let word_starts_alnum = word.chars().next().is_some_and(|c| c.is_alphanumeric());
    !word_starts_alnum
        || !text[..start]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric)
}

/// Uppercases the first character, leaving the rest as the user wrote it.
pub(crate) fn capitalise_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Removes one pair of matching quotes around the whole text.
pub(crate) fn unquote(text: &str) -> &str {
    for quote in ['"', '\'', '`'] {
        if let Some(inner) = text
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner.trim();
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with<R>(text: &str, f: impl FnOnce(Phrase<'_>) -> R) -> R {
        let lower = text.to_ascii_lowercase();
        f(Phrase::new(text, &lower))
    }

    #[test]
    fn strip_word_respects_word_boundaries() {
        with("Add milk", |p| {
            assert_eq!(p.strip_word("add").map(Phrase::orig), Some("milk"));
        });
        with("Address the letter", |p| {
            assert_eq!(p.strip_word("add"), None)
        });
        with("add", |p| {
            assert_eq!(p.strip_word("add").map(Phrase::orig), Some(""))
        });
    }

    #[test]
    fn original_case_is_kept_when_matching_in_lowercase() {
        with("ADD A Task To Buy Milk", |p| {
            let rest = p.strip_word("add a task to").unwrap();
            assert_eq!(rest.orig(), "Buy Milk");
        });
    }

    #[test]
    fn split_once_word_skips_partial_words() {
        with("rename 3 toast to bread", |p| {
            let (before, after) = p.split_once_word("to").unwrap();
            assert_eq!(before.orig(), "rename 3 toast");
            assert_eq!(after.orig(), "bread");
        });
    }

    #[test]
    fn suffix_and_words() {
        with("buy milk to my list.", |p| {
            let p = p.trim_punctuation();
            assert_eq!(
                p.strip_suffix_word("to my list").map(Phrase::orig),
                Some("buy milk")
            );
        });
        with("complete #3, and 4!", |p| {
            assert_eq!(
                p.words().collect::<Vec<_>>(),
                ["complete", "#3", "and", "4"]
            );
        });
    }

    #[test]
    fn non_ascii_text_stays_aligned() {
        with("Add Crème brûlée", |p| {
            assert_eq!(p.strip_word("add").map(Phrase::orig), Some("Crème brûlée"));
        });
    }

    #[test]
    fn helpers() {
        assert_eq!(capitalise_first("élan"), "Élan");
        assert_eq!(capitalise_first(""), "");
        assert_eq!(unquote("\"Pay rent\""), "Pay rent");
        assert_eq!(unquote("\"half"), "\"half");
    }
}
