//! [`SessionCookie`]: the encrypted cookie a browser page is known by once it signed in, since
//! an `EventSource` cannot send an `Authorization` header.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::http::HeaderMap;
use axum_extra::extract::cookie::{CookieJar, PrivateCookieJar};
use cookie::{Cookie, CookieBuilder, Key, SameSite};

use super::AuthError;
use crate::{Error, Result, UserId};

/// The session cookie that `POST /api/session` sets once the token it is given passes the
/// router's [`Authenticator`](super::Authenticator): `HttpOnly; SameSite=Strict; Path=/`, and
/// `Secure` unless told otherwise (a server on loopback, reached over plain HTTP).
///
/// It holds the user and when the session ends, encrypted and authenticated (AES-256-GCM, with
/// axum-extra's private cookies), never the token it was opened with. A session lasts
/// [`DEFAULT_TTL`](Self::DEFAULT_TTL) unless [`with_ttl`](Self::with_ttl) says otherwise;
/// `DELETE /api/session` ends it in the browser. Every instance behind one load balancer needs
/// the same key ([`from_secret`](Self::from_secret)); a [`random`](Self::random) key signs every
/// session out when the process restarts.
///
/// Secure cookies are named `__Host-chatstream_session`, a prefix that browsers accept only
/// from a secure origin, for the whole host; plain ones `chatstream_session`.
///
/// ```
/// use std::time::Duration;
/// use chatstream::server::auth::SessionCookie;
///
/// let cookie = SessionCookie::from_secret(b"at least thirty-two random bytes, kept secret")?
///     .with_ttl(Duration::from_secs(8 * 3600));
/// assert_eq!(cookie.name(), "__Host-chatstream_session");
/// assert_eq!(cookie.with_secure(false).name(), "chatstream_session");
/// # Ok::<(), chatstream::Error>(())
/// ```
#[derive(Clone, PartialEq)]
pub struct SessionCookie {
    key: Key,
    secure: bool,
    ttl: Duration,
}

/// Keys are compared in constant time (`cookie`'s own comparison).
impl Eq for SessionCookie {}

impl SessionCookie {
    /// The shortest secret a cookie key is derived from, in bytes.
    pub const MIN_SECRET_LEN: usize = 32;

    /// How long a session lasts by default: a working day.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 60 * 60);

    /// A cookie whose key is derived from `secret`: at least
    /// [`MIN_SECRET_LEN`](Self::MIN_SECRET_LEN) random bytes, the same on every instance.
    pub fn from_secret(secret: impl AsRef<[u8]>) -> Result<Self> {
        let secret = secret.as_ref();
        if secret.len() < Self::MIN_SECRET_LEN {
            return Err(Error::invalid(
                "cookie key",
                format!("must be at least {} bytes long", Self::MIN_SECRET_LEN),
            ));
        }
        Ok(Self::with_key(Key::derive_from(secret)))
    }

    /// A cookie with a random key: sessions end when the process does.
    pub fn random() -> Result<Self> {
        let key = Key::try_generate()
            .ok_or_else(|| Error::invalid("cookie key", "the system's random source failed"))?;
        Ok(Self::with_key(key))
    }

    fn with_key(key: Key) -> Self {
        SessionCookie {
            key,
            secure: true,
            ttl: Self::DEFAULT_TTL,
        }
    }

    /// Whether the cookie is `Secure` (default `true`): browsers send it over HTTPS only (and
    /// to `localhost` over HTTP). Turn it off for a server on loopback reached by another name.
    #[must_use]
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// How long a session lasts (default [`DEFAULT_TTL`](Self::DEFAULT_TTL); whole seconds, at
    /// least one).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Whether the cookie is `Secure`.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The cookie's name.
    pub fn name(&self) -> &'static str {
        if self.secure {
            "__Host-chatstream_session"
        } else {
            "chatstream_session"
        }
    }

    /// A new session of `user`, to add to a response.
    pub(crate) fn open(&self, user: &UserId) -> PrivateCookieJar {
        let ends = now_secs().saturating_add(self.ttl.as_secs());
        let max_age = cookie_duration(self.ttl);
        let cookie = self
            .attributes(Cookie::build((self.name(), format!("{ends}:{user}"))))
            .max_age(max_age);
        PrivateCookieJar::new(self.key.clone()).add(cookie)
    }

    /// The cookie that ends the session in the browser, to add to a response.
    pub(crate) fn close(&self) -> CookieJar {
        // Added, not removed: a jar removes only the cookies the request came with, and the
        // browser is to forget the cookie whether or not this request carried it.
        let mut cookie = self.attributes(Cookie::build(self.name())).build();
        cookie.make_removal();
        CookieJar::new().add(cookie)
    }

    fn attributes(&self, cookie: CookieBuilder<'static>) -> CookieBuilder<'static> {
        cookie
            .http_only(true)
            .same_site(SameSite::Strict)
            .path("/")
            .secure(self.secure)
    }

    /// The session's user: `None` without the cookie, an error when it is there but does not
    /// decrypt (another key, tampered with) or the session has ended.
    pub(crate) fn user(&self, headers: &HeaderMap) -> Option<Result<UserId, AuthError>> {
        CookieJar::from_headers(headers).get(self.name())?;
        let refused = || AuthError::invalid("the session cookie is not valid: sign in again");
        let Some(cookie) =
            PrivateCookieJar::from_headers(headers, self.key.clone()).get(self.name())
        else {
            return Some(Err(refused()));
        };
        let session = cookie
            .value()
            .split_once(':')
            .and_then(|(ends, user)| Some((ends.parse::<u64>().ok()?, UserId::new(user).ok()?)));
        Some(match session {
            Some((ends, user)) if ends > now_secs() => Ok(user),
            Some(_) => Err(AuthError::invalid("the session has ended: sign in again")),
            None => Err(refused()),
        })
    }
}

/// Names the cookie's settings, never its key.
impl fmt::Debug for SessionCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCookie")
            .field("name", &self.name())
            .field("secure", &self.secure)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn cookie_duration(ttl: Duration) -> cookie::time::Duration {
    cookie::time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use axum::{
        http::{HeaderValue, header},
        response::IntoResponse,
    };

    use super::*;

    /// The request headers a browser sends back after a response with these cookies.
    fn sent_back(jar: PrivateCookieJar) -> (HeaderMap, String) {
        let response = jar.into_response();
        let set_cookie = response.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        let pair = set_cookie.split(';').next().unwrap().to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        (headers, set_cookie)
    }

    #[test]
    fn a_session_names_its_user_until_it_ends() {
        let cookie = SessionCookie::from_secret([7u8; 32]).unwrap();
        let alice = UserId::new("alice").unwrap();
        let (headers, set_cookie) = sent_back(cookie.open(&alice));
        for attribute in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Secure",
            "Max-Age=43200",
        ] {
            assert!(set_cookie.contains(attribute), "{set_cookie}");
        }
        assert!(
            !set_cookie.contains("alice"),
            "the value is encrypted: {set_cookie}"
        );
        assert_eq!(cookie.user(&headers), Some(Ok(alice.clone())));
        assert_eq!(cookie.user(&HeaderMap::new()), None);
        // Another key does not read it.
        let other = SessionCookie::from_secret([8u8; 32]).unwrap();
        assert!(matches!(other.user(&headers), Some(Err(_))));
        // Nor is a value of one's own accepted.
        let mut forged = HeaderMap::new();
        forged.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-chatstream_session=99999999999:alice"),
        );
        assert!(matches!(cookie.user(&forged), Some(Err(_))));
        // A session that has ended.
        let ended =
            PrivateCookieJar::new(cookie.key.clone()).add(Cookie::new(cookie.name(), "1:alice"));
        let (headers, _) = sent_back(ended);
        assert!(matches!(cookie.user(&headers), Some(Err(e)) if e.reason().contains("ended")),);
        // Signing out clears it.
        let close = cookie.close().into_response();
        let cleared = close.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
        assert!(SessionCookie::from_secret(b"short").is_err());
    }

    #[test]
    fn a_plain_cookie_for_loopback() {
        let cookie = SessionCookie::random().unwrap().with_secure(false);
        let (_, set_cookie) = sent_back(cookie.open(&UserId::new("a").unwrap()));
        assert!(
            set_cookie.starts_with("chatstream_session="),
            "{set_cookie}"
        );
        assert!(!set_cookie.contains("Secure"), "{set_cookie}");
        assert!(!format!("{cookie:?}").contains("key"));
    }
}
