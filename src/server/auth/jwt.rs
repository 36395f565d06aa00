//! [`JwtAuth`]: bearer JSON Web Tokens signed by the application's own login, verified with
//! `jsonwebtoken`.

use std::{fmt, path::Path, time::Duration};

use async_trait::async_trait;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::{AuthError, Authenticator, Credential, Principal, bearer_token};
use crate::{Error, Result, UserId};

/// JSON Web Tokens: `Authorization: Bearer JWT` is the user named by the token's `sub`.
///
/// The tokens come from the application's own login, signed with HS256 and a shared secret
/// ([`hs256`](Self::hs256)) or with RS256 or ES256 and a private key whose public half the
/// server is given ([`from_public_key_pem`](Self::from_public_key_pem)). Only that one
/// algorithm is accepted. `exp` is required and enforced with a small leeway (30 s by default),
/// `nbf` is enforced when present, and `iss` and `aud` are required and checked when
/// [`with_issuer`](Self::with_issuer) or [`with_audience`](Self::with_audience) name them.
/// `sub` must be a valid [`UserId`] (`anonymous` is not one).
///
/// ```
/// use chatstream::server::auth::JwtAuth;
///
/// let auth = JwtAuth::hs256(b"a secret of at least thirty-two bytes!")?
///     .with_issuer("https://login.example")
///     .with_audience("chat");
/// # let _ = auth;
/// # Ok::<(), chatstream::Error>(())
/// ```
#[derive(Clone)]
pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    // Optional here so that a token without it is refused by the validation, which says so.
    sub: Option<String>,
}

impl JwtAuth {
    /// The shortest HS256 secret accepted, in bytes: the hash's own size (RFC 7518, section
    /// 3.2).
    pub const MIN_SECRET_LEN: usize = 32;

    /// How far past `exp` (or before `nbf`) a token is still accepted by default, for clocks
    /// that differ a little.
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

    /// Tokens signed with HS256 and `secret` (at least
    /// [`MIN_SECRET_LEN`](Self::MIN_SECRET_LEN) bytes).
    pub fn hs256(secret: impl AsRef<[u8]>) -> Result<Self> {
        let secret = secret.as_ref();
        if secret.len() < Self::MIN_SECRET_LEN {
            return Err(Error::invalid(
                "JWT secret",
                format!("must be at least {} bytes long", Self::MIN_SECRET_LEN),
            ));
        }
        let key = DecodingKey::from_secret(secret)
            .map_err(|_| Error::invalid("JWT secret", "cannot be used as an HS256 key"))?;
        Ok(Self::new(key, Algorithm::HS256))
    }

    /// Tokens signed with the private half of this PEM public key: RS256 for an RSA key, ES256
    /// for an EC (P-256) key.
    pub fn from_public_key_pem(pem: impl AsRef<[u8]>) -> Result<Self> {
        let pem = pem.as_ref();
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::new(key, Algorithm::RS256));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self::new(key, Algorithm::ES256));
        }
        Err(Error::invalid(
            "JWT public key",
            "expected an RSA or EC (P-256) public key in PEM form",
        ))
    }

    /// Like [`from_public_key_pem`](Self::from_public_key_pem), from a file.
    pub fn from_public_key_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            Error::invalid(
                "JWT public key",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::from_public_key_pem(pem).map_err(|e| match e {
            Error::Invalid { what, message } => {
                Error::invalid(what, format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        // Without an audience to expect, a token's `aud` names nothing this server checks.
        validation.validate_aud = false;
        validation.leeway = Self::DEFAULT_LEEWAY.as_secs();
        JwtAuth { key, validation }
    }

    /// Requires the token's `iss` to be `issuer`.
    #[must_use]
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.validation.set_issuer(&[issuer.into()]);
        self.validation
            .required_spec_claims
            .insert("iss".to_owned());
        self
    }

    /// Requires the token's `aud` to be (or include) `audience`.
    #[must_use]
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.validation.set_audience(&[audience.into()]);
        self.validation.validate_aud = true;
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    /// How far past `exp` (or before `nbf`) a token is still accepted (default
    /// [`DEFAULT_LEEWAY`](Self::DEFAULT_LEEWAY); whole seconds).
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// The user a token names, or why it is refused.
    pub fn user_of(&self, token: &str) -> Result<UserId, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::invalid(refusal(e.kind())))?
            .claims;
        let sub = claims
            .sub
            .ok_or_else(|| AuthError::invalid("the token has no `sub` claim"))?;
        UserId::new(sub)
            .map_err(|_| AuthError::invalid("the token's subject is not a valid user id"))
    }
}

/// Why a token was refused, in words of our own: `jsonwebtoken`'s messages may quote what the
/// token holds.
fn refusal(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer".into(),
        ErrorKind::InvalidAudience => "the token is for another audience".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token is signed with an algorithm this server does not accept".into()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's `{claim}` claim is malformed"),
        _ => "the token is not a well-formed JWT".into(),
    }
}

/// Names the algorithm and the checks, never the key.
impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("algorithms", &self.validation.algorithms)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .field("leeway_secs", &self.validation.leeway)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Authenticator for JwtAuth {
    async fn authenticate(&self, parts: &Parts) -> Result<Principal, AuthError> {
        let token = bearer_token(parts)?.ok_or(AuthError::Missing)?;
        Ok(Principal::new(self.user_of(token)?, Credential::Bearer))
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(claims: Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    fn reason(auth: &JwtAuth, token: &str) -> String {
        auth.user_of(token).unwrap_err().reason().to_owned()
    }

    #[test]
    fn hs256_tokens_name_their_user_and_are_checked() {
        let now = get_current_timestamp();
        let auth = JwtAuth::hs256(SECRET)
            .unwrap()
            .with_issuer("login")
            .with_audience("chat");
        let good = json!({"sub": "alice", "exp": now + 60, "iss": "login", "aud": "chat"});
        assert_eq!(
            auth.user_of(&token(good.clone())).unwrap().as_str(),
            "alice"
        );
        // Within the leeway.
        let mut late = good.clone();
        late["exp"] = json!(now - 5);
        assert!(auth.user_of(&token(late)).is_ok());
        for (change, why) in [
            (json!({"exp": now - 120}), "expired"),
            (json!({"iss": "elsewhere"}), "another issuer"),
            (json!({"aud": "other"}), "another audience"),
            (json!({"sub": "anonymous"}), "not a valid user id"),
            (json!({"sub": "has space"}), "not a valid user id"),
            (json!({"nbf": now + 3600}), "not valid yet"),
        ] {
            let mut claims = good.clone();
            for (k, v) in change.as_object().unwrap() {
                claims[k] = v.clone();
            }
            assert!(reason(&auth, &token(claims)).contains(why), "{why}");
        }
        for missing in ["exp", "sub", "iss", "aud"] {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove(missing);
            assert!(
                reason(&auth, &token(claims)).contains(&format!("no `{missing}`")),
                "{missing}"
            );
        }
        let other = JwtAuth::hs256(b"another secret, also 32 bytes long!!").unwrap();
        assert!(reason(&other, &token(good)).contains("signature"));
        assert!(reason(&auth, "not.a.jwt").contains("not a well-formed"));
        assert!(JwtAuth::hs256(b"short").is_err());
    }

    #[test]
    fn the_key_never_shows() {
        let auth = JwtAuth::hs256(SECRET).unwrap();
        assert!(!format!("{auth:?}").contains("0123456789"));
        assert!(JwtAuth::from_public_key_pem("not a key").is_err());
    }
}
