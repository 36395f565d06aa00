//! [`ApiKeys`]: bearer API keys checked against the SHA-256 digests of a keys file, and
//! [`NewApiKey`], a freshly minted key and the line that admits it.

use std::{fmt, path::Path};

use async_trait::async_trait;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{AuthError, Authenticator, Credential, Principal, bearer_token};
use crate::{Error, Result, UserId};

/// What every minted key starts with, so that secret scanners and people recognise one.
const KEY_PREFIX: &str = "cs_";

/// How many random bytes a minted key carries: 256 bits.
const KEY_BYTES: usize = 32;

/// API keys: `Authorization: Bearer KEY` is the user the key was minted for.
///
/// The keys file names each key by its SHA-256 digest, one per line as `USER_ID SHA256_HEX`
/// (`#` starts a comment; a user may have several keys), so the file holds no secret. A key is
/// checked by hashing it and comparing the digest with every digest of the file in constant
/// time. [`NewApiKey::generate`] mints a key and its line.
///
/// ```
/// use chatstream::{UserId, server::auth::{ApiKeys, NewApiKey}};
///
/// let minted = NewApiKey::generate(UserId::new("alice")?)?;
/// let file = format!("# team keys\n{}\n", minted.line());
/// let keys = ApiKeys::parse(&file)?;
/// assert_eq!(keys.user_of(minted.key()), Some(&UserId::new("alice")?));
/// assert_eq!(keys.user_of("cs_guessed"), None);
/// # Ok::<(), chatstream::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct ApiKeys {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    user: UserId,
    digest: [u8; 32],
}

impl ApiKeys {
    /// No keys yet: add them with [`with_key`](Self::with_key) or
    /// [`with_digest`](Self::with_digest).
    pub fn new() -> Self {
        ApiKeys::default()
    }

    /// Admits `key` as `user`'s (kept as its digest).
    #[must_use]
    pub fn with_key(mut self, user: UserId, key: &str) -> Self {
        self.entries.push(Entry {
            user,
            digest: digest(key),
        });
        self
    }

    /// Admits the key whose SHA-256 digest is `digest_hex` as `user`'s.
    pub fn with_digest(mut self, user: UserId, digest_hex: &str) -> Result<Self> {
        let digest = parse_digest(digest_hex).ok_or_else(|| {
            Error::invalid(
                "API key digest",
                "expected the key's SHA-256 digest in hex (64 hex digits)",
            )
        })?;
        self.entries.push(Entry { user, digest });
        Ok(self)
    }

    /// Reads a keys file (see [`parse`](Self::parse)). Errors name the file and the line, and
    /// never repeat what the line holds.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(
                "API keys file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Invalid { what, message } => {
                Error::invalid(what, format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// Parses the keys file's text: one key per line as `USER_ID SHA256_HEX`, `#` starting a
    /// comment (a field that begins with `#` and the rest of its line), blank lines ignored. A
    /// file without any key, a malformed line, or one digest given twice is an error that names
    /// the line.
    pub fn parse(text: &str) -> Result<Self> {
        let mut keys = ApiKeys::new();
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let fields: Vec<&str> = line
                .split_whitespace()
                .take_while(|f| !f.starts_with('#'))
                .collect();
            let bad = |why: &str| Error::invalid("API keys file", format!("line {n}: {why}"));
            let (user, digest) = match fields.as_slice() {
                [] => continue,
                [user, digest] => (user, digest),
                _ => {
                    return Err(bad(&format!(
                        "{} fields; expected `USER_ID SHA256_HEX` (the file holds the SHA-256 \
                         digest of each key, never the key)",
                        fields.len()
                    )));
                }
            };
            let user = UserId::new(user).map_err(|_| bad("the first field is not a user id"))?;
            let digest = parse_digest(digest).ok_or_else(|| {
                bad(
                    "the second field is not a SHA-256 digest in hex (64 hex digits); the file \
                     holds the digest of each key, never the key",
                )
            })?;
            if let Some(first) = keys.entries.iter().position(|e| e.digest == digest) {
                return Err(bad(&format!("the same key as line {}", lines[first])));
            }
            keys.entries.push(Entry { user, digest });
            lines.push(n);
        }
        if keys.entries.is_empty() {
            return Err(Error::invalid(
                "API keys file",
                "holds no key: add lines `USER_ID SHA256_HEX` (the server example's `keygen \
                 USER_ID` prints one)",
            ));
        }
        Ok(keys)
    }

    /// How many keys are admitted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is admitted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The user `key` belongs to, if any. Takes the same time whichever entry matches, or none:
    /// every digest is compared, in constant time.
    pub fn user_of(&self, key: &str) -> Option<&UserId> {
        let digest = digest(key);
        // Index 0 means none; entry `i` is `i + 1`.
        let mut found = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            let index = i as u64 + 1;
            found.conditional_assign(&index, entry.digest.ct_eq(&digest));
        }
        let index = usize::try_from(found).ok()?.checked_sub(1)?;
        self.entries.get(index).map(|e| &e.user)
    }
}

/// Names how many keys there are, never a digest.
impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.entries.len())
            .finish()
    }
}

#[async_trait]
impl Authenticator for ApiKeys {
    async fn authenticate(&self, parts: &Parts) -> Result<Principal, AuthError> {
        let key = bearer_token(parts)?.ok_or(AuthError::Missing)?;
        let user = self
            .user_of(key)
            .ok_or_else(|| AuthError::invalid("unknown API key"))?;
        Ok(Principal::new(user.clone(), Credential::Bearer))
    }
}

/// A new random API key (256 bits) for a user, and the keys-file line that admits it. The key
/// is shown once, to be handed to its user; only its digest is kept.
///
/// Its `Debug` output hides the key.
pub struct NewApiKey {
    user: UserId,
    key: String,
}

impl NewApiKey {
    /// Mints a key for `user` from the operating system's random source.
    pub fn generate(user: UserId) -> Result<Self> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| {
            Error::invalid("API key", format!("the system's random source failed: {e}"))
        })?;
        Ok(NewApiKey {
            user,
            key: format!("{KEY_PREFIX}{}", hex::encode(bytes)),
        })
    }

    /// The key, to hand to its user (as `Authorization: Bearer KEY`, or an OpenAI client's
    /// `api_key`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The user it belongs to.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The keys-file line that admits it: `USER_ID SHA256_HEX`.
    pub fn line(&self) -> String {
        format!("{} {}", self.user, hex::encode(digest(&self.key)))
    }
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("user", &self.user)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut digest).ok()?;
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::new("alice").unwrap()
    }

    #[test]
    fn minted_keys_are_admitted_by_their_line_only() {
        let a = NewApiKey::generate(alice()).unwrap();
        let b = NewApiKey::generate(UserId::new("bob").unwrap()).unwrap();
        assert_ne!(a.key(), b.key());
        assert!(a.key().starts_with(KEY_PREFIX));
        assert_eq!(a.key().len(), KEY_PREFIX.len() + 2 * KEY_BYTES);
        let keys = ApiKeys::parse(&format!("{}\n{} # bob's laptop\n", a.line(), b.line())).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.user_of(a.key()), Some(&alice()));
        assert_eq!(keys.user_of(b.key()).map(UserId::as_str), Some("bob"));
        assert_eq!(keys.user_of(""), None);
        assert_eq!(keys.user_of(&a.key()[1..]), None);
        assert!(!format!("{a:?}").contains(a.key()));
        assert!(!format!("{keys:?}").contains(&a.line()[6..]));
    }

    #[test]
    fn the_file_format() {
        let digest = hex::encode(digest("secret"));
        let keys = ApiKeys::parse(&format!(
            "# comment\n\n  alice   {digest}  # trailing\nbob {}\n",
            hex::encode_upper(super::digest("other"))
        ))
        .unwrap();
        assert_eq!(keys.user_of("secret"), Some(&alice()));
        assert_eq!(keys.user_of("other").map(UserId::as_str), Some("bob"));
        let keys = ApiKeys::new()
            .with_key(alice(), "k")
            .with_digest(alice(), &digest)
            .unwrap();
        assert_eq!(keys.user_of("k"), Some(&alice()));
        assert_eq!(keys.user_of("secret"), Some(&alice()));
        assert!(ApiKeys::new().with_digest(alice(), "secret").is_err());
    }

    #[test]
    fn bad_files_name_the_line_and_never_its_content() {
        let digest = hex::encode(digest("secret"));
        for (text, line, why) in [
            ("", None, "holds no key"),
            ("# nothing\n", None, "holds no key"),
            ("cs_0123456789abcdef\n", Some(1), "1 fields"),
            (
                "\nalice cs_0123456789abcdef\n",
                Some(2),
                "not a SHA-256 digest",
            ),
            (&format!("alice {digest} extra\n"), Some(1), "3 fields"),
            (&format!("anonymous {digest}\n"), Some(1), "not a user id"),
            (
                &format!("alice {digest}\nbob {digest}\n"),
                Some(2),
                "same key as line 1",
            ),
        ] {
            let e = ApiKeys::parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
            if let Some(line) = line {
                assert!(e.contains(&format!("line {line}:")), "{text:?}: {e}");
            }
            assert!(!e.contains("0123456789abcdef"), "{e}");
            assert!(!e.contains(&digest), "{e}");
        }
    }
}
