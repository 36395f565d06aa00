//! Image attachments of a send (`POST /api/messages`, `"attachments":[{"url"}]`), checked before
//! anything is stored, and the images of `/v1/chat/completions` messages.
//!
//! An attachment is a `data:` URL (`data:image/png;base64,…`) or an `https:` URL:
//!
//! - a `data:` URL must be base64, of one of `image/png`, `image/jpeg`, `image/gif` and
//!   `image/webp`, decode to at most
//!   [`ServerOptions::max_image_bytes`](super::ServerOptions::max_image_bytes), and its bytes
//!   must be an image of the type it names (its signature is checked, so a renamed file is
//!   refused); it is stored inline, as [`ContentPart::ImageBase64`];
//! - an `https:` URL (at most 2,048 bytes, with a host and no credentials) is stored as it
//!   is and fetched by the provider, which decides on its type and size.
//!
//! At most [`ServerOptions::max_images`](super::ServerOptions::max_images) per message.

use axum::http::StatusCode;
use base64::Engine;
use serde::Deserialize;

use super::ApiError;
use crate::ContentPart;

/// The image types accepted: what OpenAI, Anthropic and Gemini all take.
pub(crate) const MEDIA_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// The longest `https:` URL of an attachment, in bytes.
pub(crate) const MAX_URL: usize = 2048;

/// One attachment of a send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Attachment {
    url: String,
}

/// The limits attachments are checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageLimits {
    pub(crate) max_bytes: usize,
    pub(crate) max_count: usize,
}

/// The attachments of a send as image parts, in order; the first bad one is a 4xx naming it
/// (counted from 1).
pub(crate) fn image_parts(
    attachments: Vec<Attachment>,
    limits: ImageLimits,
) -> Result<Vec<ContentPart>, ApiError> {
    if attachments.len() > limits.max_count {
        return Err(ApiError::unprocessable(
            "too_many_attachments",
            format!(
                "a message takes at most {} image attachments, not {}",
                limits.max_count,
                attachments.len()
            ),
        ));
    }
    attachments
        .into_iter()
        .enumerate()
        .map(|(i, a)| image_part(a.url, limits.max_bytes, &format!("attachment {}", i + 1)))
        .collect()
}

/// One image given by URL, checked as the [module docs](self) say; `what` names it in errors.
pub(crate) fn image_part(
    url: String,
    max_bytes: usize,
    what: &str,
) -> Result<ContentPart, ApiError> {
    let invalid = |message: String| ApiError::unprocessable("invalid_attachment", message);
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("data") => {}
        Some("https") => return https_image(url, what),
        _ => {
            return Err(invalid(format!(
                "{what}: only data: and https: URLs are accepted"
            )));
        }
    }
    let Some((media_type, data)) = crate::message::parse_data_url(&url) else {
        return Err(invalid(format!(
            "{what}: a data: URL must be base64 (data:image/png;base64,…)"
        )));
    };
    let media_type = media_type.to_ascii_lowercase();
    if !MEDIA_TYPES.contains(&media_type.as_str()) {
        return Err(unsupported(format!(
            "{what}: {media_type:?} is not an accepted image type (use {})",
            MEDIA_TYPES.join(", ")
        )));
    }
    // Checked before decoding, so that an oversized image is refused without the work.
    if data.len() / 4 * 3 > max_bytes + 2 {
        return Err(too_large(what, max_bytes));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| invalid(format!("{what}: the data is not valid base64: {e}")))?;
    if bytes.len() > max_bytes {
        return Err(too_large(what, max_bytes));
    }
    if !signature_matches(&media_type, &bytes) {
        return Err(unsupported(format!(
            "{what}: the data is not a {media_type} image"
        )));
    }
    Ok(ContentPart::image_base64(media_type, data))
}

fn https_image(url: String, what: &str) -> Result<ContentPart, ApiError> {
    let invalid = |message: String| ApiError::unprocessable("invalid_attachment", message);
    // `https:host/path` parses (the URL standard forgives it), but is not what anyone means.
    if !url
        .get(..8)
        .is_some_and(|start| start.eq_ignore_ascii_case("https://"))
    {
        return Err(invalid(format!(
            "{what}: an https URL starts with https://"
        )));
    }
    if url.len() > MAX_URL {
        return Err(invalid(format!(
            "{what}: the URL is longer than {MAX_URL} bytes"
        )));
    }
    let parsed =
        reqwest::Url::parse(&url).map_err(|e| invalid(format!("{what}: not a valid URL: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("{what}: the URL has no host")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(format!(
            "{what}: the URL must not carry credentials"
        )));
    }
    Ok(ContentPart::image_url(url))
}

fn unsupported(message: String) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        message,
    )
}

fn too_large(what: &str, max_bytes: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "attachment_too_large",
        format!("{what}: an image may be at most {max_bytes} bytes"),
    )
}

/// Whether `bytes` start as an image of `media_type` does.
fn signature_matches(media_type: &str, bytes: &[u8]) -> bool {
    match media_type {
        "image/png" => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a"),
        "image/webp" => bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP",
        _ => false,
    }
}

/// How many bytes of request body `count` images of at most `max_bytes` take as base64 `data:`
/// URLs in JSON, for the send route's body limit.
pub(crate) fn body_allowance(max_bytes: usize, count: usize) -> usize {
    max_bytes
        .div_ceil(3)
        .saturating_mul(4)
        .saturating_add(64)
        .saturating_mul(count)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PNG: &str = "iVBORw0KGgoAAAANSUhEUg==";

    #[test]
    fn accepted_images() {
        let part = image_part(format!("data:image/png;base64,{PNG}"), 100, "a").unwrap();
        assert_eq!(part, ContentPart::image_base64("image/png", PNG));
        let part = image_part("https://example.com/a.png".into(), 100, "a").unwrap();
        assert_eq!(part, ContentPart::image_url("https://example.com/a.png"));
    }

    #[test]
    fn refused_images() {
        for (url, status, code) in [
            ("http://example.com/a.png", 422, "invalid_attachment"),
            ("file:///etc/passwd", 422, "invalid_attachment"),
            ("data:image/png,rawbytes", 422, "invalid_attachment"),
            ("data:image/png;base64,!!!!", 422, "invalid_attachment"),
            (
                "data:image/svg+xml;base64,PHN2Zz4=",
                415,
                "unsupported_media_type",
            ),
            // PNG bytes named as a JPEG.
            (
                "data:image/jpeg;base64,iVBORw0KGgoAAAANSUhEUg==",
                415,
                "unsupported_media_type",
            ),
            (
                "https://user:pw@example.com/a.png",
                422,
                "invalid_attachment",
            ),
            ("https:example.com/a.png", 422, "invalid_attachment"),
            ("https://", 422, "invalid_attachment"),
        ] {
            let e = image_part(url.into(), 100, "a").unwrap_err();
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{url}");
        }
        let e = image_part(format!("data:image/png;base64,{PNG}"), 8, "a").unwrap_err();
        assert_eq!(e.code(), "attachment_too_large");
    }
}
