//! Opaque page cursors and page-size checks.
//!
//! A cursor names the last item of the previous page by its sort key (keyset
//! pagination), so pages stay correct while the read models change underneath: an item
//! added later never shifts the next page, and nothing is shown twice. Clients must
//! treat cursors as opaque; inside they are a versioned text encoded as unpadded
//! base64url, which keeps them safe in a URL query string.

use chrono::{DateTime, Utc};
use proto_schemas::queries::{MAX_PAGE_LIMIT, PageRequest};
use uuid::Uuid;

/// Where the previous page ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// Tasks sort by number: the next page starts after `after`.
    Tasks { after: u32 },
    /// Conversations sort newest first by (created_at, id): the next page holds older ones.
    Conversations {
        created_at: DateTime<Utc>,
        conversation_id: Uuid,
    },
    /// Messages sort by their position in the conversation.
    Messages { after_seq: i64 },
}

/// Why a page request was refused; the text is for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PageError {
    #[error("limit must be between 1 and {MAX_PAGE_LIMIT}, got {0}")]
    Limit(u32),
    #[error("the cursor is malformed or belongs to another kind of list")]
    Cursor,
}

impl Cursor {
    pub(crate) fn encode(&self) -> String {
        let text = match self {
            Self::Tasks { after } => format!("t1:{after}"),
            Self::Conversations {
                created_at,
                conversation_id,
            } => {
                format!(
                    "c1:{}:{}",
                    created_at.timestamp_micros(),
                    conversation_id.simple()
                )
            }
            Self::Messages { after_seq } => format!("m1:{after_seq}"),
        };
        base64url_encode(text.as_bytes())
    }

    pub(crate) fn decode(raw: &str) -> Result<Self, PageError> {
        let bytes = base64url_decode(raw).ok_or(PageError::Cursor)?;
        let text = String::from_utf8(bytes).map_err(|_| PageError::Cursor)?;
        let mut parts = text.split(':');
        let cursor = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("t1"), Some(after), None, None) => Self::Tasks {
                after: after.parse().map_err(|_| PageError::Cursor)?,
            },
            (Some("c1"), Some(micros), Some(id), None) => {
                let micros: i64 = micros.parse().map_err(|_| PageError::Cursor)?;
                Self::Conversations {
                    created_at: DateTime::from_timestamp_micros(micros).ok_or(PageError::Cursor)?,
                    conversation_id: Uuid::parse_str(id).map_err(|_| PageError::Cursor)?,
                }
            }
            (Some("m1"), Some(seq), None, None) => Self::Messages {
                after_seq: seq.parse().map_err(|_| PageError::Cursor)?,
            },
            _ => return Err(PageError::Cursor),
        };
        Ok(cursor)
    }
}

/// A checked page request: the limit, and the cursor decoded with `expect`, which says
/// which kind of list the cursor must belong to.
pub(crate) fn check_page<T>(
    page: &PageRequest,
    expect: impl FnOnce(Cursor) -> Option<T>,
) -> Result<(u32, Option<T>), PageError> {
    if page.limit == 0 || page.limit > MAX_PAGE_LIMIT {
        return Err(PageError::Limit(page.limit));
    }
    let after = match &page.cursor {
        None => None,
        Some(raw) => Some(expect(Cursor::decode(raw)?).ok_or(PageError::Cursor)?),
    };
    Ok((page.limit, after))
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // One more output character than whole input bytes: 1 → 2, 2 → 3, 3 → 4.
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let value = ALPHABET.iter().position(|a| a == c)?;
            n |= (value as u32) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    // Only the canonical encoding is accepted, so one position has one cursor.
    (base64url_encode(&out) == text).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_every_length() {
        for len in 0..20 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64url_encode(&bytes);
            assert!(!text.contains('='));
            assert_eq!(base64url_decode(&text), Some(bytes));
        }
        assert_eq!(base64url_encode(b"hello"), "aGVsbG8");
        assert_eq!(base64url_decode("a"), None);
        assert_eq!(
            base64url_decode("aGVsbG9"),
            None,
            "non-canonical trailing bits"
        );
        assert_eq!(base64url_decode("a+b/"), None);
    }

    #[test]
    fn cursors_round_trip() {
        let cursors = [
            Cursor::Tasks { after: 42 },
            Cursor::Conversations {
                created_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
                conversation_id: Uuid::now_v7(),
            },
            Cursor::Messages { after_seq: 7 },
        ];
        for cursor in cursors {
            assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
        }
    }

    #[test]
    fn bad_cursors_and_limits_are_refused() {
        let tasks = |c| match c {
            Cursor::Tasks { after } => Some(after),
            _ => None,
        };
        let page = |limit, cursor: Option<String>| PageRequest { limit, cursor };
        assert_eq!(check_page(&page(10, None), tasks), Ok((10, None)));
        assert_eq!(
            check_page(&page(10, Some(Cursor::Tasks { after: 3 }.encode())), tasks),
            Ok((10, Some(3)))
        );
        assert_eq!(check_page(&page(0, None), tasks), Err(PageError::Limit(0)));
        assert_eq!(
            check_page(&page(MAX_PAGE_LIMIT + 1, None), tasks),
            Err(PageError::Limit(201))
        );
        assert_eq!(
            check_page(&page(10, Some("!!".into())), tasks),
            Err(PageError::Cursor)
        );
        let messages_cursor = Cursor::Messages { after_seq: 1 }.encode();
        assert_eq!(
            check_page(&page(10, Some(messages_cursor)), tasks),
            Err(PageError::Cursor)
        );
        assert_eq!(
            check_page(&page(10, Some(base64url_encode(b"t1:-1"))), tasks),
            Err(PageError::Cursor)
        );
    }
}
